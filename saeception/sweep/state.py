"""Where a sweep's databases live, and a check that each answers before Ray starts.

With a local or NFS `--storage`, the Optuna study (`optuna.db`) and the default MLflow store (`mlflow.db`)
sit in it. With a URI storage (s3://, gs://, …) SQLite cannot live there, so they go to the sweep's
state directory on this machine's local disk, at an absolute path that never depends on the working
directory (under `ray job submit` that is Ray's throw-away job directory): `$SAECEPTION_STATE_DIR` or
`~/.saeception/sweeps`, then `<name>-<hash of the storage>`, so two sweeps of one name with different
storages never share a study. The cluster files point SAECEPTION_STATE_DIR at the head's own disk; when it
is set, a path storage (NFS) keeps its databases there too.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from saeception.store.uris import redact
from saeception.store.uris import scheme as uri_scheme

from ..config import ConfigError
from .tracking import Tracker

STATE_ENV = "SAECEPTION_STATE_DIR"
DEFAULT_STATE_ROOT = "~/.saeception/sweeps"
CONNECT_TIMEOUT_S = 10


def state_dir(name: str, storage: str) -> Path:
    """The local directory of a URI-stored sweep's SQLite stores and report files (absolute)."""
    root = Path(os.environ.get(STATE_ENV) or DEFAULT_STATE_ROOT).expanduser()
    if not root.is_absolute():
        raise ConfigError(f"{STATE_ENV}: {root} must be an absolute path")
    digest = hashlib.sha256(storage.rstrip("/").encode()).hexdigest()[:10]
    return root / f"{name}-{digest}"


def rdb_storage(url: str):
    """Optuna's RDB storage at `url`, a server's connection bounded by CONNECT_TIMEOUT_S."""
    import optuna  # lazy: Optuna only where the study is opened

    kwargs = {} if url.startswith("sqlite") else {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def check_optuna_storage(url: str) -> None:
    """Connects to the Optuna RDB storage once (creating its tables, as the sweep would); ConfigError
    naming --optuna-storage when it cannot."""
    import sqlalchemy.exc  # lazy: only to open an RDB storage

    if url.split(":", 1)[0].split("+", 1)[0] not in ("sqlite", "postgresql", "mysql", "oracle", "mssql"):
        raise ConfigError(f"--optuna-storage: {redact(url)} is not an RDB URL (sqlite:////abs/path, postgresql://…, mysql://…)")
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        raise ConfigError(f"--optuna-storage: {url} is relative to the working directory; give an absolute path (sqlite:////abs/path)")
    try:
        rdb_storage(url)
    except ImportError as e:
        raise ConfigError(f"--optuna-storage: {redact(url)} needs a database driver that is not installed ({e.name or e})") from None
    except (sqlalchemy.exc.SQLAlchemyError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"--optuna-storage: cannot open {redact(url)} ({redact(first)[:300]})") from None


STUDY_OWNER = "saeception.sweep_id"  # the Optuna study's user attribute: the id of the sweep it belongs to


def study_owner(url: str, study: str) -> str | None:
    """The sweep id the Optuna study `study` in storage `url` belongs to; None when there is no such study (a
    SQLite file not yet created is not created here) or it names none (an older saeception's)."""

    if url.startswith("sqlite:////") and not Path(url.removeprefix("sqlite:///")).exists():
        return None
    storage = rdb_storage(url)
    try:
        study_id = storage.get_study_id_from_name(study)
    except KeyError:
        return None
    return storage.get_study_user_attrs(study_id).get(STUDY_OWNER)


def check_study_owner(url: str, study: str, sweep_id: str) -> None:
    """ConfigError naming --name when the storage's study of this name belongs to another sweep (one of the
    same name under another --storage, sharing this --optuna-storage): the two would share one study."""
    owner = study_owner(url, study)
    if owner and owner != sweep_id:
        raise ConfigError(f"--name: the Optuna study {study!r} in {redact(url)} belongs to another sweep (id {owner}; one "
                          "of the same name under another --storage?); choose another --name")


def mark_study(url: str, study: str, sweep_id: str) -> None:
    """Marks the study (Ray's searcher created or loaded it) as this sweep's (STUDY_OWNER)."""

    storage = rdb_storage(url)
    storage.set_study_user_attr(storage.get_study_id_from_name(study), STUDY_OWNER, sweep_id)


def check_mlflow(uri: str) -> None:
    """Asks the MLflow tracking store once: /health of a server, a query of a database store; ConfigError
    naming --mlflow-uri when it does not answer."""
    scheme = uri_scheme(uri)
    try:
        if scheme in ("http", "https"):
            import requests  # lazy: only to ask an MLflow server

            r = requests.get(uri.rstrip("/") + "/health", timeout=CONNECT_TIMEOUT_S)
            if r.status_code != 200:
                raise ConfigError(f"--mlflow-uri: {redact(uri)} answered /health with HTTP {r.status_code}")
        elif scheme.split("+", 1)[0] in ("sqlite", "postgresql", "mysql", "mssql"):
            if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
                raise ConfigError(f"--mlflow-uri: {uri} is relative to the working directory; give an absolute path (sqlite:////abs/path)")

            Tracker(uri).client.search_experiments(max_results=1)
        # other schemes (databricks, file) are MLflow's to check when the sweep opens its run
    except ConfigError:
        raise
    except ImportError as e:
        raise ConfigError(f"--mlflow-uri: {redact(uri)} needs a package that is not installed ({e.name or e})") from None
    except Exception as e:  # noqa: BLE001 - any failure to reach the store is the user's to fix, said in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"--mlflow-uri: cannot reach {redact(uri)} ({type(e).__name__}: {redact(first)[:300]})") from None
