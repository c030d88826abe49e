"""Credentials given inside URIs never reach the terminal, a log line, MLflow or Ray's files.

A URI may carry a password (`postgresql://user:pass@host/db`, `s3://key:secret@bucket/path`) or a secret
in its query (`s3://bucket?access_key=…&secret_key=…`, pyarrow's S3 options). `redact` masks both, in a
URI or in any text that contains one; everything the sweep prints, logs or records goes through it.
"""

from __future__ import annotations

import logging
import re

MASK = "***"

# scheme://user:password@  (the password is whatever lies between the first ':' and '@' of the userinfo)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*):(?P<secret>[^@\s]+)@")
# query parameters that hold a secret (pyarrow S3/GCS options, SAS tokens, passwords)
_SECRET_QUERY = re.compile(r"(?i)(?P<head>[?&](?:secret_key|access_key|session_token|password|passwd|token|"
                           r"sas_token|account_key|sig|x-amz-signature|x-amz-credential|x-amz-security-token)=)"
                           r"(?P<secret>[^&#\s]+)")


def redact(text: str) -> str:
    """`text` with every URI password and secret query value replaced by ***."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", str(text))
    return _SECRET_QUERY.sub(lambda m: f"{m['head']}{MASK}", text)


def has_credentials(uri: str) -> bool:
    return redact(uri) != uri


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
