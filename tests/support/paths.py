"""Where things are, for every test: the repository, this support folder, the test spaces."""

from pathlib import Path

SUPPORT = Path(__file__).resolve().parent
REPO = SUPPORT.parents[1]
SPACES = SUPPORT / "spaces"
TINY = SPACES / "tiny.yaml"
BAD_INPUTS = SUPPORT / "bad_inputs"
