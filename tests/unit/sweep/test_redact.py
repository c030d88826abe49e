"""No credential of a URI reaches a log line or a traceback, whichever logger or code path prints it (issue #38)."""

import io
import logging

import pytest

from saeception.sweep import cli
from saeception.sweep.redact import install_log_filter

SECRET = "hunter2-pw"
URI = f"postgresql://alice:{SECRET}@db:5432/optuna"


@pytest.fixture
def record_factory():
    """install_log_filter changes the process's record factory: put the old one back."""
    factory = logging.getLogRecordFactory()
    yield
    logging.setLogRecordFactory(factory)


def test_every_logger_s_lines_and_tracebacks_are_masked(record_factory):
    """The filter sat on the root logger's handlers only: a logger with a handler of its own (Ray's, MLflow's)
    printed the secret, and every traceback (formatted after the filter ran) did too."""
    out = io.StringIO()
    own = logging.getLogger("test_redact.own_handler")
    own.addHandler(logging.StreamHandler(out))
    own.propagate = False
    try:
        install_log_filter()
        install_log_filter()  # once is enough; twice changes nothing
        own.warning("could not open %s", URI)
        try:
            raise ConnectionError(f"connecting to {URI} failed")
        except ConnectionError:
            own.exception("the study did not open")
        own.warning("the stack", stack_info=True)
        own.warning("%s %s", "a format whose args do not fit")  # reported by logging, as without the mask
    finally:
        own.removeHandler(own.handlers[0])
        own.propagate = True
    text = out.getvalue()
    assert SECRET not in text, text
    assert "could not open postgresql://alice:***@db:5432/optuna" in text
    assert "ConnectionError: connecting to postgresql://alice:***@db:5432/optuna failed" in text


def test_an_unexpected_error_s_traceback_is_masked_and_exits_1(monkeypatch, capsys, record_factory):
    """The CLI caught two exception types; any other printed Python's own traceback, credentials and all."""
    def plan(args):
        raise RuntimeError(f"could not reach {URI}")

    monkeypatch.setattr(cli, "plan", plan)
    assert cli.main(["--trials", "1"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and SECRET not in err
    assert err.rstrip().endswith("RuntimeError: could not reach postgresql://alice:***@db:5432/optuna")
