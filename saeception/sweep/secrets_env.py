"""A node's secrets file, `~/.saeception/secrets.env`, read with its values taken literally.

The cluster files read it into the environment of `ray start` and of the MLflow server with

    secrets="$(python -m saeception.sweep.secrets_env ~/.saeception/secrets.env)" && eval "$secrets" && …

which prints one `export KEY='value'` line per entry, quoted for the shell. Sourcing the file as shell
(`set -a && . secrets.env`) expanded what a value holds: `pa$$w0rd$x` arrived as `pa<pid>w0rd`. The format:
`KEY=value` lines (an `export ` before the key is allowed); blank lines and lines starting with `#` are
skipped; the value is everything after the first `=`, with one pair of matching quotes around all of it
removed; nothing in it is expanded (`$`, backslashes, backticks stay as written). A line that is not of this
form is an error naming the file and line (never its value), exit 2.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def read_secrets(path: Path) -> dict[str, str]:
    """The file's entries, in order. ValueError naming `path` and the line when one is not KEY=value."""
    entries: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not KEY.fullmatch(key):
            # The line may be a secret pasted without its key: say where it is, never what it holds.
            raise ValueError(f"{path}:{number}: expected KEY=value (KEY: letters, digits and '_', not starting with a digit)")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        entries[key] = value
    return entries


def shell_exports(entries: dict[str, str]) -> str:
    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in entries.items())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m saeception.sweep.secrets_env FILE  (prints export lines for eval)", file=sys.stderr)
        return 2
    try:
        entries = read_secrets(Path(args[0]).expanduser())
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        print(f"error: secrets file: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(shell_exports(entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
