"""What Scribes keeps in Redis besides the broker and caches: jobs, documents, staging."""
