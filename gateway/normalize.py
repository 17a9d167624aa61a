"""SPEC section 3 path normalisation: the only form of a path that routing and upstreams see.

Unsafe paths raise BadHttpRequestError (400 invalid_request) with a stable `reason`.
"""

from __future__ import annotations

import re
from typing import Final

from gateway.errors import BadHttpRequestError
from gateway.http import fastscan

_UNRESERVED: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)
_SAFE_CHARS: Final = r"A-Za-z0-9\-._~!$&'()*+,;=:@"
#: Already-normal paths: single `/` separators, no `.`/`..` segment (nor `..;x`), no `%`.
_FAST: Final = re.compile(rf"/|(?:/(?!\.\.?(?:[/;]|$))[{_SAFE_CHARS}]+)+/?")
#: Raw characters never allowed: controls, space, DEL, non-ASCII, `\`, and `#` / `?` which an
#: upstream would read as the end of the path (the caller has split the query off already).
_RAW_BAD: Final = re.compile(r"[^\x21-\x7e]|[\\#?]")
_ESCAPE: Final = re.compile(r"%(..)", re.DOTALL)
_HEX: Final = "0123456789abcdefABCDEF"
_SLASHES: Final = re.compile(r"//+")
#: runs of escaped non-ASCII bytes (escapes are upper-case by then): must be strict UTF-8
_HIGH_RUN: Final = re.compile(r"(?:%[89A-F][0-9A-F])+")


def _escape_table() -> dict[str, str | None]:
    """Every two-hex-digit escape body -> its normal form, or None when it is forbidden."""
    table: dict[str, str | None] = {}
    for hi in _HEX:
        for lo in _HEX:
            byte = int(hi + lo, 16)
            if byte < 0x20 or byte in (0x7F, 0x2F, 0x5C):
                table[hi + lo] = None  # controls, encoded `/` and `\`
            elif byte in _UNRESERVED:
                table[hi + lo] = chr(byte)
            else:
                table[hi + lo] = "%" + (hi + lo).upper()
    return table


_ESCAPES: Final = _escape_table()


def _unescape(match: re.Match[str]) -> str:
    body = match.group(1)
    out = _ESCAPES.get(body, "")
    if out is None:
        reason = "path_encoded_separator" if body.lower() in ("2f", "5c") else "path_control_char"
        raise BadHttpRequestError(reason=reason)
    if not out:
        raise BadHttpRequestError(reason="path_bad_escape")
    return out


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 on a path with single slashes; refuses `..` above the root."""
    stack: list[str] = []
    trailing = False
    for seg in path.split("/")[1:]:
        trailing = seg in ("", ".", "..")
        if seg == "..":
            if not stack:
                raise BadHttpRequestError(reason="path_escapes_root")
            stack.pop()
        elif _dot_with_params(seg):
            # `..;x` (or `..%3Bx`) is `..` to Tomcat and friends: refuse what an upstream
            # may resolve.
            raise BadHttpRequestError(reason="path_dot_segment_params")
        elif seg and seg != ".":
            stack.append(seg)
    if not stack:
        return "/"
    return "/" + "/".join(stack) + ("/" if trailing else "")


def _dot_with_params(seg: str) -> bool:
    if ";" in seg and seg.partition(";")[0] in (".", ".."):
        return True
    return "%3B" in seg and seg.partition("%3B")[0] in (".", "..")


def _check_utf8(path: str) -> None:
    """Escaped bytes above 0x7F must be well-formed UTF-8: overlong forms such as `%C0%AE`
    (a `.` to lax decoders) and stray bytes are refused."""
    for run in _HIGH_RUN.findall(path):
        try:
            bytes.fromhex(run.replace("%", "")).decode("utf-8")
        except UnicodeDecodeError:
            raise BadHttpRequestError(reason="path_bad_utf8") from None


def _fast_py(raw: str) -> bool:
    return _FAST.fullmatch(raw) is not None


#: whether a path is already normal: `_FAST`, or its C twin (gateway/http/_scan.c, held to it by
#: tests/test_scan.py) where that is built
_ALREADY_NORMAL: Final = fastscan.normal_path or _fast_py


def normalize_path(raw: str) -> str:
    """Normalise a request path (query already split off) or raise BadHttpRequestError."""
    if _ALREADY_NORMAL(raw):
        return raw
    if not raw.startswith("/"):
        raise BadHttpRequestError(reason="path_not_absolute")
    bad = _RAW_BAD.search(raw)
    if bad is not None:
        char = bad.group()
        if char == "\\":
            raise BadHttpRequestError(reason="path_backslash")
        if char > "\x7f":
            raise BadHttpRequestError(reason="path_non_ascii")
        if char < " " or char == "\x7f":
            raise BadHttpRequestError(reason="path_control_char")
        raise BadHttpRequestError(reason="path_bad_char")
    path = raw
    if "%" in path:
        if path.endswith("%") or path[-2:-1] == "%":
            raise BadHttpRequestError(reason="path_bad_escape")
        path = _ESCAPE.sub(_unescape, path)
        _check_utf8(path)
    if "//" in path:
        path = _SLASHES.sub("/", path)
    return _remove_dot_segments(path)
