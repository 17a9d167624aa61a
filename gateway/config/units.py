"""Parsing of durations (`250ms`, `2s`, `5m`, `6h`, `365d`, seconds) and sizes (`16KiB`, `10MB`)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}


def parse_duration(value: object) -> float:
    """Seconds from `250ms`, `2s`, `5m`, `6h`, `365d` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(
            "a duration is a number of seconds or a string like 250ms, 2s, 5m, 6h, 365d"
        )
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError(
            f"invalid duration {value!r}: use a number of seconds or 250ms, 2s, 5m, 6h, 365d"
        )
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from a number or `10KB`/`10MB`/`1GB` (powers of 1000) or `KiB`/`MiB`/`GiB` (1024)."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string like 16KiB, 10MB")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    else:
        raise ValueError(f"invalid size {value!r}: use a number of bytes or 16KiB, 10MB, 1GiB")
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration, for summaries."""
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= factor and seconds % factor == 0:
            return f"{int(seconds // factor)}{unit}"
    return f"{round(seconds * 1000)}ms"


def format_size(size: int) -> str:
    """The shortest exact spelling of a size (`16KiB`, `10MB`, `100`), for the reference."""
    for unit in ("GiB", "MiB", "KiB", "GB", "MB", "KB"):
        factor = _SIZE_UNITS[unit]
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
