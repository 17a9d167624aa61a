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
