"""What smsbot lets into its logs: no phone number or message body, and one line per bad request.

Two libraries would otherwise write private or hostile data into the log: the database drivers
at DEBUG (SQL with its parameters: phone numbers, message bodies) and aiohttp's server, which
logs a malformed request with a traceback and the raw request line (up to the whole 8 KiB line,
so a hostile client can fill the log). SMSBOT_LOG_SENSITIVE=true lets the drivers through, for a
developer debugging on their own data; nothing else changes it.
"""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

__all__ = ["HTTP_LOG", "keep_private"]

# Loggers that print SQL parameters (phone numbers, message bodies) at DEBUG or INFO.
PRIVATE_LOGGERS = ("aiosqlite", "sqlalchemy.engine", "sqlalchemy.pool", "asyncpg")


class _OneLinePerBadRequest(logging.Filter):
    """Turn aiohttp's report of a malformed request into one short WARNING, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, RequestPayloadError) and exc.__cause__ is not None:
            exc = exc.__cause__
        if isinstance(exc, HttpProcessingError | RequestPayloadError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            # The class says what was wrong; its message quotes the client's bytes, so it stays out.
            record.msg = "refused a malformed request from %s: %s"
            record.args = (remote, type(exc).__name__)
            record.exc_info = record.exc_text = None
            if record.levelno > logging.WARNING:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


HTTP_LOG = logging.getLogger("smsbot.app.server.http")
"""The logger aiohttp's request handler reports protocol errors to (see create_app)."""
HTTP_LOG.addFilter(_OneLinePerBadRequest())


def keep_private(*, sensitive: bool = False) -> None:
    """Keep the database drivers' SQL parameters out of the log unless `sensitive`."""
    for name in PRIVATE_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if sensitive else logging.WARNING)
