"""Text from a file made safe to print, and the one-line refusals every reader ends in.

Nothing here imports torch: a command line answers --help and a bad flag at once."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

EXIT_BAD_INPUT = 2  # the status argparse uses for bad usage; a refused file gets it too


class OneLineError(Exception):
    """Bad input refused in one line: a file, a folder or a flag."""


def safe_text(text: object, limit: int = 200) -> str:
    """`text` with control characters escaped, so a name from a file cannot drive the terminal."""
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."


def error_line(err: BaseException, max_lines: int = 1) -> str:
    """'ExceptionType: the first lines of its message', on one line, escaped."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    message = " ".join(lines[:max_lines])
    return safe_text(f"{type(err).__name__}: {message}" if message else type(err).__name__, limit=400)


def print_error(message: object) -> None:
    """`error: message` on stderr, one line, escaped."""
    print(f"error: {safe_text(message, limit=600)}", file=sys.stderr, flush=True)


def fail(message: object) -> NoReturn:
    """Report bad input in one line on stderr and exit with status 2, without a traceback."""
    print_error(message)
    raise SystemExit(EXIT_BAD_INPUT)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr and exit status 2, like every refusal."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)")


def not_found(path: Path, made_by: str = "") -> str:
    """The line for a missing input file, with the command that makes it."""
    return f"{path} not found{f'; create it with: {made_by}' if made_by else ''}"
