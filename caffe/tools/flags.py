"""gflags-style command lines for the ``caffe`` commands.

:class:`ToolParser` / :func:`parse_flags`: wrong or missing arguments print the usage on stderr and give exit
status 1 (never a traceback, never ``SystemExit``). Boolean flags take gflags' spellings: ``--gray``,
``--gray=true``, ``--gray=false``, ``--nogray``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from typing import Any

_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


class UsageError(Exception):
    """A wrong or missing command-line argument (its message says which)."""


class ToolParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are exceptions (turned into usage + exit 1 by :func:`parse_flags`)."""

    def __init__(self, prog: str, usage: str, description: str = "") -> None:
        super().__init__(prog=prog, usage=usage, description=description, add_help=True, allow_abbrev=False)
        self.bool_flags: list[str] = []

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(message)

    def add_bool(self, name: str, help: str) -> None:
        """A gflags boolean: ``--name``, ``--name=true|false``, ``--noname``; default false."""
        self.add_argument(f"--{name}", action="store_true", default=False, help=help)
        self.add_argument(f"--no{name}", action="store_false", dest=name, help=argparse.SUPPRESS)
        self.bool_flags.append(name)


def _expand_bools(argv: Sequence[str], names: Iterable[str]) -> list[str]:
    names = set(names)
    out = []
    for arg in argv:
        if arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
            if key in names:
                v = value.lower()
                if v in _TRUE:
                    arg = f"--{key}"
                elif v in _FALSE:
                    arg = f"--no{key}"
                else:
                    raise UsageError(f"--{key} is a boolean flag: use --{key}, --{key}=true or --{key}=false")
        out.append(arg)
    return out


def parse_flags(parser: ToolParser, argv: Sequence[str]) -> argparse.Namespace | int:
    """Parse ``argv`` (flags may come before, between or after the positional arguments, as with
    gflags); on a usage error print the usage and the problem to stderr and return 1; for
    ``--help`` print the help and return 0."""
    try:
        return parser.parse_intermixed_args(_expand_bools(argv, parser.bool_flags))
    except UsageError as e:
        print(f"{parser.format_usage().rstrip()}\n{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    except SystemExit as e:  # --help
        return int(e.code or 0)


def usage_error(parser: ToolParser, message: str) -> int:
    """Print the usage and ``message`` to stderr; exit status 1."""
    print(f"{parser.format_usage().rstrip()}\n{parser.prog}: error: {message}", file=sys.stderr)
    return 1


def gflags_int(text: str) -> int:
    """An int32 flag's value as gflags reads it: decimal, or hex with a ``0x`` prefix."""
    t = text.strip()
    try:
        return int(t, 16) if t.lower().lstrip("+-").startswith("0x") else int(t, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
