"""The head scanner's pure-Python twin: a strict subset of HTTP/1.1 heads, read without llhttp.

`gateway/http/_scan.c` (module `gateway.http._scan`) is the fast path in front of llhttp; this
module computes the same results for every input and runs when the C module is not built
(`GATEWAY_PURE_PYTHON=1`). tests/test_scan.py holds both to each other and to llhttp.

The subset: a request line `METHOD SP /target SP HTTP/1.1` (seven methods, target bytes
0x21..0x7E), a response status line `HTTP/1.1 SP 3DIGIT SP reason` (200..599 but 204 and 304),
header lines `token ":" OWS value` with CRLF line ends, no trailing whitespace, no control
bytes, at most one all-digit Content-Length of up to 18 digits, and none of the names that
change framing or switch protocols (Transfer-Encoding, Upgrade). Anything else is REFUSED, never
answered with an error: the caller then feeds the same bytes to llhttp, which stays the one
general parser and decides. Refusing is therefore always safe; only accepting must agree with
llhttp, byte for byte, which is why the subset is narrow. A head without its blank line yet is
INCOMPLETE: the server keeps it and scans again when more comes (one that cannot become a head
of the subset goes to llhttp at once).
"""

from __future__ import annotations

import re
from typing import Final

INCOMPLETE: Final = 0
REFUSED: Final = -1

_END: Final = b"\r\n\r\n"
_CONTENT_LENGTH: Final = b"content-length"
_MAX_LENGTH_DIGITS: Final = 18

#: Method bytes -> the str handed back (one shared object per method).
_METHODS: Final[dict[bytes, str]] = {
    m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
}
#: Names that change framing or switch protocols: llhttp's business (Content-Length is ours;
#: Connection is kept, the server decides keep-alive from it as it does for llhttp's heads).
_REFUSED_NAMES: Final = frozenset({b"transfer-encoding", b"upgrade"})
_FRAMING_NAMES: Final = _REFUSED_NAMES | {_CONTENT_LENGTH}

_COMMON_NAMES = (
    b"Accept", b"Accept-Encoding", b"Accept-Language", b"Accept-Ranges",
    b"Access-Control-Allow-Origin", b"Age", b"Authorization", b"Cache-Control", b"Connection",
    b"Content-Encoding", b"Content-Language", b"Content-Length", b"Content-Type", b"Cookie",
    b"Date", b"DPoP", b"ETag", b"Expect", b"Expires", b"Host", b"If-Modified-Since",
    b"If-None-Match", b"Keep-Alive", b"Last-Modified", b"Location", b"Origin", b"Pragma",
    b"Proxy-Connection", b"Referer", b"Server", b"Set-Cookie", b"Traceparent", b"Tracestate",
    b"Transfer-Encoding", b"Upgrade", b"User-Agent", b"Vary", b"Via", b"X-Forwarded-For",
    b"X-Forwarded-Host", b"X-Forwarded-Proto", b"X-Request-Id", b"X-Appsecret-Proof",
    b"X-Appsecret-Time",
)  # fmt: skip
#: Common field names as clients and servers spell them -> one shared lower-case object: one
#: dict lookup checks and lowers them (valid tchar names by construction). wire.lower_name uses
#: it too, on llhttp's path.
KNOWN_NAMES: Final[dict[bytes, bytes]] = {
    spelling: lower
    for name in _COMMON_NAMES
    for lower in (name.lower(),)
    for spelling in (name, lower, name.upper())
}
#: tchar+ (RFC 9110 5.6.2): any other field name
_NAME_RE: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: What a field line may hold besides its CRLF end: HTAB, SP..~ and obs-text (no CTL, no DEL)
_LINE_BYTES: Final = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)])
_OWS: Final = b" \t"
_TRAILING_OWS: Final = (b" ", b"\t")
_REQUEST_LINE_RE: Final = re.compile(rb"([A-Z]+) (/[\x21-\x7e]*) HTTP/1\.1\r\n")
_STATUS_LINE_RE: Final = re.compile(rb"HTTP/1\.1 ([0-9]{3}) [\t\x20-\x7e\x80-\xff]*\r\n")


def _fields(
    buf: bytes, start: int, blank: int, refused_names: frozenset[bytes]
) -> tuple[list[tuple[bytes, bytes]], int, int] | None:
    """The header lines in buf[start:blank] -> (headers, a bound of their size, content length).

    None when a line is outside the subset, a refused name appears, or Content-Length is
    repeated or not 1..18 digits. The content length is -1 without a Content-Length line. The
    size bound, len(block) + count + 2, is the spec's sum of len(name) + len(value) + 4 plus the
    OWS after the colons: the exact sum (`_size`) is only needed when the bound is over a limit.
    The byte checks run over the whole block in C (bytes.translate, bytes.split); the loop
    only splits names from values.
    """
    headers: list[tuple[bytes, bytes]] = []
    if start >= blank:  # the request/status line ends the head
        return headers, 0, -1
    block = buf[start:blank]
    lines = block.split(b"\r\n")
    # Without the allowed bytes, only the CRLFs between lines may remain: no CTL, DEL, bare CR
    # or bare LF anywhere.
    if block.translate(None, _LINE_BYTES) != b"\r\n" * (len(lines) - 1):
        return None
    # A value ends in SP/HTAB only if a line does (a line of a name and OWS only has an empty
    # value, which is allowed: those lines are looked at one by one).
    trailing = b" \r\n" in block or b"\t\r\n" in block or block.endswith(_TRAILING_OWS)
    length = -1
    append = headers.append
    for line in lines:
        name, colon, value = line.partition(b":")
        lower = KNOWN_NAMES.get(name)
        if lower is None:
            if not colon or _NAME_RE.fullmatch(name) is None:
                return None  # no colon, or a name that is not all tchar (SP, obs-fold...)
            lower = name.lower()
        elif not colon:
            return None
        value = value.lstrip(_OWS)
        if trailing and value.endswith(_TRAILING_OWS):
            return None
        if lower in _FRAMING_NAMES:
            if lower in refused_names:
                return None
            if lower == _CONTENT_LENGTH:
                if length != -1 or len(value) > _MAX_LENGTH_DIGITS or not value.isdigit():
                    return None
                length = int(value)
        append((lower, value))
    return headers, len(block) + len(lines) + 2, length


def _size(headers: list[tuple[bytes, bytes]]) -> int:
    """The spec's size of a head: the sum of len(name) + len(value) + 4 over its lines."""
    return sum([len(name) + len(value) for name, value in headers]) + 4 * len(headers)


def scan_request(
    buf: bytes, pos: int, max_url: int, max_header_bytes: int, max_header_count: int
) -> tuple[int, str, bytes, list[tuple[bytes, bytes]], int] | int:
    """The request head at buf[pos] -> (end, method, target, headers, content_length).

    INCOMPLETE when no blank line follows pos yet, REFUSED when the head is outside the subset
    or over a limit; content_length is -1 without a Content-Length header.
    """
    if pos < 0:
        return REFUSED
    blank = buf.find(_END, pos)
    if blank < 0:
        return INCOMPLETE
    line = _REQUEST_LINE_RE.match(buf, pos, blank + 2)
    if line is None:
        return REFUSED
    method = _METHODS.get(line.group(1))
    target: bytes = line.group(2)
    if method is None or len(target) > max_url:
        return REFUSED
    fields = _fields(buf, line.end(), blank, _REFUSED_NAMES)
    if fields is None:
        return REFUSED
    headers, bound, length = fields
    if len(headers) > max_header_count:
        return REFUSED
    if bound > max_header_bytes and _size(headers) > max_header_bytes:
        return REFUSED
    return blank + 4, method, target, headers, length


def scan_response(
    buf: bytes, pos: int, max_fields: int
) -> tuple[int, int, list[tuple[bytes, bytes]], int] | int:
    """The upstream answer head at buf[pos] -> (end, status, headers, content_length).

    INCOMPLETE when no blank line follows pos yet; REFUSED outside the subset, including an
    answer without exactly one Content-Length and any status llhttp frames differently
    (1xx, 204, 304).
    """
    if pos < 0:
        return REFUSED
    blank = buf.find(_END, pos)
    if blank < 0:
        return INCOMPLETE
    line = _STATUS_LINE_RE.match(buf, pos, blank + 2)
    if line is None:
        return REFUSED
    status = int(line.group(1))
    if status < 200 or status > 599 or status == 204 or status == 304:
        return REFUSED
    fields = _fields(buf, line.end(), blank, _REFUSED_NAMES)
    if fields is None:
        return REFUSED
    headers, _bound, length = fields
    if len(headers) > max_fields or length < 0:
        return REFUSED
    return blank + 4, status, headers, length


def join_fields(first: bytes, fields: list[tuple[bytes, bytes]], last: bytes) -> bytes:
    """`first`, a `name: value` CRLF line per field, then `last` (the C one: one allocation)."""
    out = [first]
    for name, value in fields:
        out += (name, b": ", value, b"\r\n")
    out.append(last)
    return b"".join(out)
