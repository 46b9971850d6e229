from __future__ import annotations

from scribes.cli import main

main()
