"""Passwords the embedded servers are set up with: generated, kept in one file of the
services folder that only its owner can read (0600), never printed."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path


def write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its owner can read, created so from the start."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


class Passwords:
    """`root/secrets.json`: a password per server name."""

    def __init__(self, root: Path) -> None:
        self.file = root / "secrets.json"

    def all(self) -> dict[str, str]:
        try:
            return dict(json.loads(self.file.read_text()))
        except (OSError, ValueError):
            return {}

    def get(self, name: str) -> str | None:
        return self.all().get(name)

    def new(self, name: str) -> str:
        """A fresh password for `name`, kept for the next start. Made when its server is
        first set up: a server set up before passwords existed keeps running without one."""
        kept = self.all()
        kept[name] = secrets.token_urlsafe(24)
        write_private(self.file, json.dumps(kept))
        return kept[name]
