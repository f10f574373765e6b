"""What the scripts do with a user's mistake, as the ``tgdpet`` command does (tgdpet/cli.py).

A bad argument or a :class:`~tgdpet.errors.TgdpetError` ends in one sentence on stderr (``Error: ...``) and
exit status 2, never a traceback; argument types here check values (and output files) before any work.
Imported by the scripts beside it (``python scripts/NAME.py`` puts this folder on ``sys.path``).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Callable, NoReturn, TypeVar

from tgdpet.errors import TgdpetError
from tgdpet.files import check_can_write

T = TypeVar("T")


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, saying a bad argument in one line that names ``--help``, with exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"Error: {message}; see '{self.prog} --help'.", file=sys.stderr)
        sys.exit(TgdpetError.exit_code)


def run(main: Callable[[], int | None]) -> NoReturn:
    """Run a script's ``main`` and exit with its status; a TgdpetError is printed as ``Error: ...``, exit 2."""
    try:
        status = main()
    except TgdpetError as e:
        print(f"Error: {e}", file=sys.stderr)
        status = e.exit_code
    sys.exit(status)


def checked(kind: Callable[[str], T], ok: Callable[[T], bool], what: str) -> Callable[[str], T]:
    """An argparse type: ``kind(text)``, refused unless ``ok`` (``what`` names the values it takes)."""

    def parse(text: str) -> T:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


positive_int = checked(int, lambda v: v > 0, "a positive whole number")
seed_int = checked(int, lambda v: v >= 0, "a seed (a whole number, 0 or more)")
positive_float = checked(float, lambda v: v > 0 and math.isfinite(v), "a positive number")


def comma_list(item: Callable[[str], T]) -> Callable[[str], list[T]]:
    """An argparse type: comma-separated values, each of the type ``item``."""
    return lambda text: [item(part) for part in text.split(",")]


def output_file(text: str) -> Path:
    """An argparse type: a file written at the end of the run, checked at the start (a folder that exists and can
    be written into), so that a long run's results are not lost to a typing mistake."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; name a file in it")
    try:
        return check_can_write(path, overwrite=True)
    except TgdpetError as e:
        raise argparse.ArgumentTypeError(str(e).rstrip(".")) from None
