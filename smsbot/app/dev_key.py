"""The development operator key: `smsbot serve` with the sandbox and no SMSBOT_API_KEY makes one.

So the operator API examples work under `make run` as written, once the printed
`export SMSBOT_API_KEY=…` line is pasted. The key is kept in `.smsbot-api-key` beside the SQLite
database (or in the working directory for PostgreSQL), readable by its owner only, so it stays
the same across restarts. It is never made for a real provider: there SMSBOT_API_KEY is the key.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from sqlalchemy import make_url

from smsbot.config import Secret, Settings

log = logging.getLogger(__name__)

KEY_FILE = ".smsbot-api-key"
KEY_BYTES = 32  # token_urlsafe(32): 43 characters


def key_path(settings: Settings) -> Path:
    """Where the development key is kept: beside the SQLite file, else the working directory."""
    url = make_url(settings.sync_database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).parent / KEY_FILE
    return Path(KEY_FILE)


def development_key(settings: Settings) -> Secret | None:
    """The key `serve` uses when SMSBOT_API_KEY is unset and the provider is the sandbox."""
    if settings.provider != "sandbox" or settings.api_key:
        return None
    path = key_path(settings)
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        key = ""
    except OSError as exc:
        log.warning("cannot read %s (%s): making a new development key", path, exc.strerror)
        key = ""
    if len(key) < KEY_BYTES:  # missing, or edited by hand into something guessable
        key = secrets.token_urlsafe(KEY_BYTES)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(key + "\n")
        except OSError as exc:
            log.warning(
                "cannot keep the development key in %s (%s): it will change at every start",
                path,
                exc.strerror,
            )
    return Secret(key)
