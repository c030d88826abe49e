"""Credentials given inside URIs never reach a log line or a traceback: the sweep's masking of log records
(the masking itself is saeception.store.uris.redact, re-exported here for the layer's callers)."""

from __future__ import annotations

import logging

from saeception.store.uris import MASK, has_credentials, redact

__all__ = ["MASK", "RedactingFilter", "has_credentials", "install_log_filter", "redact", "redact_record"]


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Masks credentials in the record's message, its traceback and its stack (each formatted here, once)."""
    try:
        message = record.getMessage()
    except Exception:  # args that do not fit the format: the handler reports that when it emits, as logging does
        message = None
    if message is not None and redact(message) != message:
        record.msg, record.args = redact(message), None
    if record.exc_info and not record.exc_text:
        # Formatter.format uses exc_text when it is set: the traceback is formatted once, here, and masked.
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


class RedactingFilter(logging.Filter):
    """Masks credentials in every record a handler it is added to emits (redact_record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


def install_log_filter() -> None:
    """Masks every log record this process makes from now on, of every logger (MLflow's and Ray's have handlers
    of their own, which a filter on the root logger's handlers never saw) and with its traceback: a record
    factory, installed once."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "redacting", False):
        return

    def redacting_factory(*args, **kwargs) -> logging.LogRecord:
        return redact_record(factory(*args, **kwargs))

    redacting_factory.redacting = True
    logging.setLogRecordFactory(redacting_factory)
