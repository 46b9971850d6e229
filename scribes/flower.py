"""The login that the Flower `scribes up` starts asks for."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from rag.settings import ConfigurationError, Settings

__all__ = ["FLOWER_USER", "FlowerAuth", "flower_login"]

FLOWER_USER = "scribes"


@dataclass(frozen=True, slots=True)
class FlowerAuth:
    """Flower's basic-auth login: SCRIBES_FLOWER_AUTH, else one generated into the data folder."""

    user: str
    password: SecretStr
    # Where a generated password is kept; None when it comes from SCRIBES_FLOWER_AUTH.
    file: Path | None = None
    # Made just now: the one time `scribes up` prints it.
    generated: bool = False

    @property
    def basic_auth(self) -> str:
        return f"{self.user}:{self.password.get_secret_value()}"


def flower_login(settings: Settings) -> FlowerAuth:
    """The login Flower asks for; the first start writes `data_dir/flower-auth` (mode 0600)."""
    if settings.flower_auth is not None:
        user, password = _login(settings.flower_auth.get_secret_value(), "SCRIBES_FLOWER_AUTH")
        return FlowerAuth(user, SecretStr(password))
    path = settings.data_dir / "flower-auth"
    if path.exists():
        path.chmod(0o600)
        user, password = _login(path.read_text().strip(), f"{path} (delete it for a new password)")
        return FlowerAuth(user, SecretStr(password), path)
    password = secrets.token_urlsafe(24)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f"{FLOWER_USER}:{password}\n")
    return FlowerAuth(FLOWER_USER, SecretStr(password), path, generated=True)


def _login(value: str, source: str) -> tuple[str, str]:
    user, colon, password = value.partition(":")
    # Flower splits its list of logins at commas.
    if not colon or not user or not password or "," in value:
        raise ConfigurationError(f"{source} is not of the form user:password (with no comma)")
    return user, password
