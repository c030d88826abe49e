"""Credentials given inside URIs never reach a log line: the sweep's logging filter (the masking itself
is saeception.store.uris.redact, re-exported here for the layer's callers)."""

from __future__ import annotations

import logging

from saeception.store.uris import MASK, has_credentials, redact

__all__ = ["MASK", "RedactingFilter", "has_credentials", "install_log_filter", "redact"]

class RedactingFilter(logging.Filter):
    """Masks credentials in every record a handler emits (its message is formatted here, once)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def install_log_filter() -> None:
    """Adds the filter to every handler of the root logger (the CLI's own logging)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
