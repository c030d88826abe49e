"""URIs, in one place: what is one, its filesystem, whether that is known, and how its secrets are masked.

A storage, cache or tracking location is a local path (`/mnt/nfs/x`, `file:///mnt/nfs/x`) or a URI with a
scheme (`s3://bucket/x`, `gs://…`, any fsspec protocol, `http://…`, `sqlite:///…`). `redact` masks what a
URI may carry: a password or token in its userinfo (`postgresql://user:pass@host/db`,
`https://TOKEN@host`) and secret query values (`?secret_key=…`, `?access_token=…`, `?sig=…`); everything
saeception prints, logs, stores or pickles goes through it.
"""

from __future__ import annotations

import re
from pathlib import Path

MASK = "***"
# Filesystems pyarrow opens itself; any other scheme goes through fsspec.
PYARROW_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")

# scheme://user:password@ (the password is whatever lies between the first ':' and '@' of the userinfo)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*):(?P<secret>[^@\s]+)@")
# scheme://TOKEN@host: a userinfo without a password is a token for http(s) (GitHub, Hugging Face, MLflow)
_TOKEN_USERINFO = re.compile(r"(?P<head>\bhttps?://)(?P<secret>[^:/?#@\s]+)@")
# query parameters that hold a secret (pyarrow S3/GCS options, OAuth, SAS tokens, signed URLs, passwords)
_SECRET_QUERY = re.compile(r"(?i)(?P<head>[?&](?:secret_key|access_key|session_token|password|passwd|pwd|token|"
                           r"access_token|refresh_token|id_token|api_key|apikey|client_secret|credentials|"
                           r"sas_token|account_key|sig|signature|x-amz-signature|x-amz-credential|"
                           r"x-amz-security-token|x-goog-signature|x-goog-credential)=)(?P<secret>[^&#\s]+)")


def scheme(location: str | Path) -> str:
    """The URI's scheme ('' for a plain path)."""
    text = str(location)
    return text.split("://", 1)[0] if "://" in text else ""


def after_scheme(location: str) -> str:
    """What follows `scheme://` ('sqlite:////abs/db' -> '//abs/db'); the location itself without a scheme."""
    return location.split("://", 1)[1] if "://" in location else location


def is_uri(location: str | Path) -> bool:
    """A location with a scheme other than file:// (a file:// URI is a local path)."""
    return scheme(location) not in ("", "file")


def local_path(location: str | Path) -> Path:
    """A local location as a Path (file:// stripped, ~ expanded). Raises ValueError for a URI."""
    if is_uri(location):
        raise ValueError(f"{redact(str(location))} is not a local path")
    return Path(str(location).removeprefix("file://")).expanduser()


def check_uri(location: str) -> str | None:
    """None when `location` opens as `filesystem` opens it: pyarrow parses it (bucket, query options), or its
    fsspec protocol's package is installed; otherwise what is wrong (a trial would fail on it, every one).
    Reaches no store: whether the bucket answers is the trials' to find."""
    name = scheme(location)
    if name in PYARROW_SCHEMES:
        import pyarrow.fs as pafs  # lazy: object-store filesystems only for URIs

        probe = location
        if name == "s3" and "region=" not in location:  # without a region pyarrow asks AWS for the bucket's
            probe += ("&" if "?" in location else "?") + "region=us-east-1"
        try:
            pafs.FileSystem.from_uri(probe)
        except (ValueError, OSError) as e:  # pyarrow's ArrowInvalid is a ValueError
            return f"not a {name}:// URI pyarrow opens ({redact(str(e).strip().splitlines()[0])})"
        return None
    import fsspec  # lazy: object-store filesystems only for URIs

    if name not in fsspec.available_protocols():
        return f"unknown filesystem scheme {name!r} (pyarrow: {', '.join(PYARROW_SCHEMES)}; or an fsspec protocol)"
    try:
        fsspec.get_filesystem_class(name)
    except (ImportError, ValueError) as e:
        return f"{name}:// cannot be opened here ({redact(str(e))})"
    return None


def filesystem(location: str):
    """(pyarrow FileSystem, path) for a URI: pyarrow's own for s3/gs/hdfs/abfs, fsspec's otherwise."""
    import pyarrow.fs as pafs  # lazy: object-store filesystems only for URIs

    if scheme(location) in PYARROW_SCHEMES:
        return pafs.FileSystem.from_uri(location)
    import fsspec  # lazy: object-store filesystems only for URIs

    fs, path = fsspec.core.url_to_fs(location)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def redact(text: str) -> str:
    """`text` with every URI password, userinfo token and secret query value replaced by ***."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", str(text))
    text = _TOKEN_USERINFO.sub(lambda m: f"{m['head']}{MASK}@", text)
    return _SECRET_QUERY.sub(lambda m: f"{m['head']}{MASK}", text)


def has_credentials(uri: str) -> bool:
    return redact(uri) != uri
