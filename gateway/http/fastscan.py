"""Which head scanner runs (docs/ARCHITECTURE.md, "The fast path"): the C one
(gateway/http/_scan.c) when it is built, else its pure-Python twin (gateway/http/scan.py), which
gives the same results for every input (tests/test_scan.py holds both to that, and to llhttp).

`GATEWAY_HEAD_SCANNER` in the environment overrides the choice: `c` (the default; the twin when
the C one is not built), `python` (the twin), or `off` (no scanner: llhttp parses every head, as
before the scanner existed). The last two are for ruling the scanner out when a parsing problem
is suspected; the `gateway_started` log line says which one runs."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from types import ModuleType
from typing import Final

INCOMPLETE: Final = 0  # no complete head yet: kept, or left to llhttp
REFUSED: Final = -1  # outside the scanner's subset: llhttp parses it
#: reads a head may be kept across before llhttp gets it: a kept head is scanned again from its
#: start on every read, so one trickled in a byte at a time would cost its size squared; llhttp
#: reads each byte once
MAX_PARTIAL_READS: Final = 8
CHOICES: Final = ("c", "python", "off")


def _implementation(choice: str) -> ModuleType:
    if choice not in CHOICES:
        raise ValueError(f"GATEWAY_HEAD_SCANNER must be one of {', '.join(CHOICES)}: {choice!r}")
    if choice == "c":
        try:
            return importlib.import_module("gateway.http._scan")
        except ImportError:  # a pure-Python build (GATEWAY_PURE_PYTHON=1)
            pass
    return importlib.import_module("gateway.http.scan")


def _refuse_request(buf: bytes, pos: int, max_url: int, max_bytes: int, max_count: int) -> int:
    return REFUSED


def _refuse_response(buf: bytes, pos: int, max_fields: int) -> int:
    return REFUSED


CHOICE: Final = os.environ.get("GATEWAY_HEAD_SCANNER", "c").strip().lower() or "c"
IMPLEMENTATION: Final = _implementation(CHOICE)
#: what runs: "c", "python" (the twin) or "off"
NAME: Final = (
    "off" if CHOICE == "off" else "c" if IMPLEMENTATION.__name__.endswith("._scan") else "python"
)
#: (buf, pos, max_url, max_header_bytes, max_header_count) ->
#: (end, method, target, headers, content_length or -1) | INCOMPLETE | REFUSED
scan_request: Final[
    Callable[
        [bytes, int, int, int, int], tuple[int, str, bytes, list[tuple[bytes, bytes]], int] | int
    ]
] = _refuse_request if NAME == "off" else IMPLEMENTATION.scan_request
#: (buf, pos, max_fields) -> (end, status, headers, content_length) | INCOMPLETE | REFUSED
scan_response: Final[
    Callable[[bytes, int, int], tuple[int, int, list[tuple[bytes, bytes]], int] | int]
] = _refuse_response if NAME == "off" else IMPLEMENTATION.scan_response
#: (path) -> whether the request path is already normal (gateway/normalize.py's fast case); None
#: where the C module is not built (normalize.py then uses its own pattern, the twin)
normal_path: Final[Callable[[str], bool] | None] = getattr(IMPLEMENTATION, "normal_path", None)
#: (first, fields, last) -> first + b"name: value\r\n" for each field + last, one allocation
join_fields: Final[Callable[[bytes, list[tuple[bytes, bytes]], bytes], bytes]] = (
    IMPLEMENTATION.join_fields
)


def may_become_head(buf: bytes, pos: int, starts: tuple[bytes, ...]) -> bool:
    """Whether buf[pos:], an INCOMPLETE head, may still become one the scanner takes: it
    begins with one of `starts` (or is the beginning of one), and its line ends are all CRLF so
    far. Otherwise llhttp gets it at once, and refuses it at once if it is broken (a client
    using bare LF line ends would otherwise wait for a CRLFCRLF that never comes)."""
    lead = buf[pos : pos + 16]
    if not any(lead.startswith(s) or s.startswith(lead) for s in starts):
        return False
    return buf.count(b"\n", pos) == buf.count(b"\r\n", pos)
