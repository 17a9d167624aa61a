"""Which head scanner runs (docs/ARCHITECTURE.md, "The fast path"): the C one
(gateway/http/_scan.c) when it is built, else its pure-Python twin (gateway/http/scan.py), which
gives the same results for every input (tests/test_scan.py holds both to that, and to llhttp)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Final

INCOMPLETE: Final = 0  # no complete head yet: kept, or left to llhttp
REFUSED: Final = -1  # outside the scanner's subset: llhttp parses it


def _implementation() -> ModuleType:
    try:
        return importlib.import_module("gateway.http._scan")
    except ImportError:  # a pure-Python build (GATEWAY_PURE_PYTHON=1)
        return importlib.import_module("gateway.http.scan")


IMPLEMENTATION: Final = _implementation()
#: (buf, pos, max_url, max_header_bytes, max_header_count) ->
#: (end, method, target, headers, content_length or -1) | INCOMPLETE | REFUSED
scan_request: Final[
    Callable[
        [bytes, int, int, int, int], tuple[int, str, bytes, list[tuple[bytes, bytes]], int] | int
    ]
] = IMPLEMENTATION.scan_request
#: (buf, pos, max_fields) -> (end, status, headers, content_length) | INCOMPLETE | REFUSED
scan_response: Final[
    Callable[[bytes, int, int], tuple[int, int, list[tuple[bytes, bytes]], int] | int]
] = IMPLEMENTATION.scan_response
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
