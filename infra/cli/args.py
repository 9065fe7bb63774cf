"""Argument types shared by several commands, and the parser every command uses."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import NoReturn

from infra.settings import check_db_url, hide_password


class Parser(argparse.ArgumentParser):
    """argparse, with a mistake said in one line (argparse prints the usage first, which
    buries the line that says what is wrong); subcommands inherit it (``parser_class``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the "
                     "options)\n")


def parse_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _number(text: str, kind: Callable[[str], float]) -> float:
    try:
        value = kind(text)
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def seconds(text: str) -> float:
    """A duration in seconds, above 0 (a zero or negative wait is always a slip)."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: give a number of seconds above 0")
    return value


def positive(text: str) -> float:
    """A factor above 0 (a simulator scale)."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: give a number above 0")
    return value


def int_between(low: int, high: int) -> Callable[[str], int]:
    """An integer in [low, high]; the error names both bounds."""
    def parse(text: str) -> int:
        value = int(_number(text, int))
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text}: give a whole number from {low} to "
                                             f"{high}")
        return value
    parse.__name__ = "integer"  # argparse names the type in its own messages
    return parse


def hours(text: str) -> float:
    """0 (never) to 720 hours (30 days), as MOTCUA_DISPLAY_RELOAD_HOURS."""
    value = _number(text, float)
    if not 0 <= value <= 720:
        raise argparse.ArgumentTypeError(f"{text}: give hours from 0 (never) to 720")
    return value


def absolute_path(text: str) -> Path:
    """A path made absolute from the working folder, so every message says where it is."""
    return Path(text).expanduser().absolute()


def database_url(text: str) -> str:
    """A SQLite or PostgreSQL URL whose driver is installed (as MOTCUA_DB_URL)."""
    try:
        check_db_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{hide_password(text)!r}: {exc}") from None
    return text


tcp_port = int_between(1, 65535)
