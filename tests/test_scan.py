"""The head scanner (gateway/http/_scan.c and its pure-Python twin gateway/http/scan.py).

Both implementations must give the same result for every input, and whatever they accept must
be what llhttp (httptools) makes of the same bytes: one complete message, no error, the same
method, target, version, header list, status, body length and keep-alive. Refusing is always
allowed (llhttp then parses the bytes itself); accepting is what is checked.

The differential tests generate heads from a grammar of near-valid HTTP/1.1 (odd methods,
targets, versions, header names and values, obs-fold, bare CR/LF, Content-Length variants,
framing headers, limits, pipelining) and mutate valid heads byte by byte. They run a bounded
number of examples per test; a longer hunt raises it, e.g.

    FUZZ_EXAMPLES=20000 .venv/bin/pytest tests/test_scan.py -p no:cacheprovider --timeout=0 -q

(without the C module, in a GATEWAY_PURE_PYTHON=1 build, the twin alone is held to llhttp).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import httptools
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway import normalize
from gateway.http import scan as py_scan
from gateway.http.head import HeadScan
from gateway.http.scan import INCOMPLETE, REFUSED

PURE = os.environ.get("GATEWAY_PURE_PYTHON") == "1"
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
END = b"\r\n\r\n"
BIG = 1 << 20  # limits that never bind


def _load_c_scanner() -> ModuleType | None:
    try:
        return importlib.import_module("gateway.http._scan")
    except ModuleNotFoundError as err:
        if err.name != "gateway.http._scan":
            raise
        return None


C_SCAN = _load_c_scanner()
#: Every implementation present: the twin always, the C module when built.
IMPLEMENTATIONS: dict[str, ModuleType] = {"python": py_scan}
if C_SCAN is not None:
    IMPLEMENTATIONS["c"] = C_SCAN


@pytest.fixture(params=["python", "c"])
def scanner(request: pytest.FixtureRequest) -> ModuleType:
    if request.param not in IMPLEMENTATIONS:
        pytest.skip("gateway.http._scan is not built")
    return IMPLEMENTATIONS[request.param]


def test_c_scanner_is_built_unless_pure_python() -> None:
    """A compiled build must have the C scanner: its parametrizations would skip silently."""
    assert PURE or C_SCAN is not None, "gateway.http._scan is missing: `make install`"


# --------------------------------------------------------------------------- llhttp's view
BODY_CAP = 1 << 16  # a longer body is fed in part: llhttp must then still be reading it


@dataclass
class Recording:
    """What llhttp reports through httptools' callbacks for the bytes fed."""

    parser: Any = None
    url: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: int = 0
    head: dict[str, Any] | None = None
    completed: list[bool] = field(default_factory=list)  # keep-alive of each complete message

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        p = self.parser
        request = isinstance(p, httptools.HttpRequestParser)
        self.head = {
            "version": p.get_http_version(),
            "keep_alive": p.should_keep_alive(),
            "method": p.get_method() if request else None,
            "status": None if request else p.get_status_code(),
        }

    def on_body(self, body: bytes) -> None:
        self.body += len(body)

    def on_message_complete(self) -> None:
        self.completed.append(self.parser.should_keep_alive())


def llhttp_reads(kind: type, head: bytes, length: int) -> Recording:
    """llhttp's parse of a head and a body of `length` bytes (a long one cut at BODY_CAP)."""
    rec = Recording()
    rec.parser = kind(rec)
    rec.parser.feed_data(head + b"x" * min(length, BODY_CAP))  # raises if llhttp refuses
    assert rec.head is not None
    if length <= BODY_CAP:
        assert len(rec.completed) == 1, "llhttp does not end the message where the scanner does"
        assert rec.body == length
    else:
        assert rec.completed == []
        assert rec.body == BODY_CAP
    return rec


def check_request_result(buf: bytes, pos: int, result: object) -> None:
    """The spec's properties of one scan_request result, llhttp the judge of an acceptance."""
    found = buf.find(END, pos) if pos >= 0 else -1
    if result == INCOMPLETE:
        assert pos < 0 or found < 0
        return
    if result == REFUSED:
        return
    assert isinstance(result, tuple), result
    end, method, target, headers, length = result
    assert end == found + 4
    assert length >= -1
    rec = llhttp_reads(httptools.HttpRequestParser, buf[pos:end], max(length, 0))
    assert rec.head is not None
    assert rec.head["method"] == method.encode()
    assert rec.url == target
    assert rec.head["version"] == "1.1"
    assert rec.headers == headers
    # the server decides keep-alive from the headers itself: it must agree with llhttp's
    assert rec.head["keep_alive"] is HeadScan(headers).keep_alive(b"1.1")
    assert rec.completed == [rec.head["keep_alive"]] or length > BODY_CAP


def check_response_result(buf: bytes, pos: int, result: object) -> None:
    found = buf.find(END, pos) if pos >= 0 else -1
    if result == INCOMPLETE:
        assert pos < 0 or found < 0
        return
    if result == REFUSED:
        return
    assert isinstance(result, tuple), result
    end, status, headers, length = result
    assert end == found + 4
    assert length >= 0
    rec = llhttp_reads(httptools.HttpResponseParser, buf[pos:end], length)
    assert rec.head is not None
    assert rec.head["status"] == status
    assert rec.head["version"] == "1.1"
    assert rec.headers == headers


def scan_all_requests(
    buf: bytes, pos: int, max_url: int, max_header_bytes: int, max_header_count: int
) -> object:
    """scan_request by every implementation: one result, checked, or the test fails."""
    results = {
        name: impl.scan_request(buf, pos, max_url, max_header_bytes, max_header_count)
        for name, impl in IMPLEMENTATIONS.items()
    }
    assert len(set(map(repr, results.values()))) == 1, results
    result = results["python"]
    event(f"request: {'accepted' if isinstance(result, tuple) else result}")
    check_request_result(buf, pos, result)
    return result


def scan_all_responses(buf: bytes, pos: int, max_fields: int) -> object:
    results = {
        name: impl.scan_response(buf, pos, max_fields) for name, impl in IMPLEMENTATIONS.items()
    }
    assert len(set(map(repr, results.values()))) == 1, results
    result = results["python"]
    event(f"response: {'accepted' if isinstance(result, tuple) else result}")
    check_response_result(buf, pos, result)
    return result


# --------------------------------------------------------------------------- the grammar
TCHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
NOT_TCHARS = b' "(),/:;<=>?@[\\]{}\t\x00\x01\x0b\x0c\x7f\x80\xc3\xff\r\n'
TARGET_BYTES = bytes(range(0x21, 0x7F))
VALUE_BYTES = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)])
VISIBLE_BYTES = bytes(b for b in VALUE_BYTES if b not in (9, 0x20))
VALID_METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"]
OTHER_METHODS = [
    b"get", b"Get", b"post", b"CONNECT", b"TRACE", b"PRI", b"PROPFIND", b"SEARCH", b"FOO",
    b"GETX", b"GE", b"", b"G\x00T", b"GET\t", b"\x80GET", b"DELETE ", b"OPTION",
]  # fmt: skip
TARGET_PIECES = [
    b"a", b"Z", b"0", b"/", b"//", b"?", b"#", b"%", b"%2F", b"%zz", b"..", b".", b"=", b"&",
    b";", b":", b"@", b"!", b"$", b"'", b"(", b")", b"*", b"+", b",", b"-", b"_", b"~", b'"',
    b"<", b">", b"[", b"]", b"\\", b"^", b"`", b"{", b"|", b"}", b"\x7f", b"\x80", b"\xff",
    b"\xc3\xa9", b" ", b"\t", b"\x00", b"\x0b", b"\r", b"\n", b"HTTP/1.1",
]  # fmt: skip
TARGET_STARTS = [b"/", b"", b"*", b"http://h.example", b"h:80", b"?", b"#", b"\\"]
ODD_VERSIONS = [
    b"HTTP/1.0", b"HTTP/1.0", b"HTTP/1.0", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1",
    b"HTTP/1.10", b"HTTP/1", b"HTTP/1.1 ", b"", b"HTTP/1.1\x00", b"HTTP/1.2", b"HTTP/1.01",
]  # fmt: skip
COMMON_NAMES = [
    b"Host", b"User-Agent", b"Accept", b"Accept-Encoding", b"Authorization", b"Cookie",
    b"Content-Type", b"X-Request-Id", b"Keep-Alive", b"TE", b"Expect", b"Trailer", b"Via",
    b"X-Forwarded-For", b"Forwarded", b"Date", b"Server", b"Set-Cookie", b"Cache-Control",
]  # fmt: skip
FRAMING_NAMES = [
    b"Content-Length", b"content-length", b"CONTENT-LENGTH", b"Content-length",
    b"Transfer-Encoding", b"transfer-encoding", b"TRANSFER-ENCODING", b"Transfer-encoding",
    b"Connection", b"connection", b"CONNECTION", b"Proxy-Connection", b"proxy-connection",
    b"Upgrade", b"upgrade", b"UPGRADE", b"Content-Lengthx", b"Content-Lengt", b"XContent-Length",
    b"Transfer-Encodings", b"Connections", b"Upgrades",
]  # fmt: skip
CONNECTION = frozenset({b"connection", b"proxy-connection"})
FRAMING = frozenset(
    {b"content-length", b"transfer-encoding", b"connection", b"proxy-connection", b"upgrade"}
)
LENGTH_VALUES = [
    b"0", b"1", b"5", b"10", b"05", b"0000000000000000005", b"000000000000000005",
    b"123456789012345678", b"999999999999999999", b"1234567890123456789", b"99999999999999999999",
    b"18446744073709551616", b"+5", b"-5", b"-0", b" 5", b"5 ", b"5\t", b"\t5", b"0x5", b"5,5",
    b"5, 5", b"5 5", b"", b"1e3", b"\xd9\xa5", b"\xef\xbc\x95", b"5\x00", b"five",
]  # fmt: skip
FRAMING_VALUES = [
    b"chunked", b"gzip, chunked", b"identity", b"close", b"keep-alive", b"upgrade", b"Upgrade",
    b"websocket", b"h2c", b"keep-alive, Upgrade", b"", b"chunked ",
]  # fmt: skip
VALUE_PIECES = [
    b"\x80", b"\xff", b"\xc3\xa9", b" ", b"\t", b"  ", b"\x00", b"\x01", b"\x1f", b"\x7f", b"\r",
    b"\n", b"\x0b", b"\x0c", b"\r\n", b"\r\n ", b"\r\n\t", b":", b'"', b"\\",
]  # fmt: skip
ODD_LINE_ENDS = [b"\n", b"\r", b"\r\r\n", b"\n\r", b" \r\n", b"\t\r\n", b"\r\n\r\n"]
ODD_COLONS = [b" :", b"\t:", b"", b"::", b": :", b";", b"\x00:"]


def of(alphabet: bytes, min_size: int = 0, max_size: int = 12) -> st.SearchStrategy[bytes]:
    """Byte strings over an alphabet (random bytes mapped onto it: one draw, fast to make)."""
    table = bytes(alphabet[i % len(alphabet)] for i in range(256))
    return st.binary(min_size=min_size, max_size=max_size).map(lambda b: b.translate(table))


#: A field value of the subset: no leading/trailing SP or HTAB, obs-text allowed, maybe empty.
valid_values = of(VALUE_BYTES, max_size=16).map(lambda v: v.strip(b" \t"))


@st.composite
def odd_targets(draw: st.DrawFn) -> bytes:
    start = draw(st.sampled_from(TARGET_STARTS))
    pieces = st.one_of(of(TARGET_BYTES, max_size=6), st.sampled_from(TARGET_PIECES))
    return start + b"".join(draw(st.lists(pieces, max_size=8)))


valid_names = st.one_of(st.sampled_from(COMMON_NAMES), of(TCHARS, 1, 16))
valid_lines = st.builds(
    lambda name, ows, value: name + b":" + ows + value + b"\r\n",
    valid_names,
    of(b" \t", max_size=3),
    valid_values,
)


@st.composite
def odd_lines(draw: st.DrawFn) -> bytes:
    """A header line broken in one way: its name, colon, a value byte, trailing OWS, its end."""
    name, colon, ows, value, end = draw(valid_names), b":", b" ", draw(valid_values), b"\r\n"
    kind = draw(st.integers(0, 4))
    if kind == 0:
        a, bad, b = draw(of(TCHARS, max_size=6)), draw(of(NOT_TCHARS, 1, 1)), draw(of(TCHARS))
        name = a + bad + b
    elif kind == 1:
        colon = draw(st.sampled_from(ODD_COLONS))
    elif kind == 2:
        piece = draw(st.sampled_from(VALUE_PIECES))
        at = draw(st.integers(0, len(value)))
        value = value[:at] + piece + value[at:]
    elif kind == 3:
        value += draw(st.sampled_from([b" ", b"\t", b" \t", b"\x00", b"\x7f", b"\x80"]))
    else:
        end = draw(st.sampled_from(ODD_LINE_ENDS))
    return name + colon + ows + value + end


def length_line(digits: bytes, spelling: bytes = b"Content-Length", ows: bytes = b" ") -> bytes:
    return spelling + b":" + ows + digits + b"\r\n"


short_digits = st.one_of(of(b"0123456789", 1, 3), of(b"0123456789", 1, 18))
#: What may be wrong with a head: each generated head has one or two of them, or none
COMMON_FLAWS = [
    "spaces", "version", "line_end", "bad_line", "length", "two_lengths", "framing", "fold",
    "final", "many", "cut",
]  # fmt: skip
REQUEST_FLAWS = [*COMMON_FLAWS, "leading", "method", "target"]
RESPONSE_FLAWS = [*COMMON_FLAWS, "status", "status", "reason"]


def draw_flaws(draw: st.DrawFn, names: list[str]) -> frozenset[str]:
    count = draw(st.sampled_from([0, 1, 1, 1, 2]))
    return frozenset(draw(st.sampled_from(names)) for _ in range(count))


@st.composite
def field_block(draw: st.DrawFn, flaws: frozenset[str], length: bool) -> bytes:
    """Header lines: valid ones plus those the flaws ask for, in random places."""
    lines = draw(st.lists(valid_lines, max_size=6))

    def insert(line: bytes) -> None:
        lines.insert(draw(st.integers(0, len(lines))), line)

    spellings = st.sampled_from(FRAMING_NAMES[:4])
    if length or "length" in flaws:
        digits = draw(st.sampled_from(LENGTH_VALUES) if "length" in flaws else short_digits)
        insert(length_line(digits, draw(spellings), draw(of(b" \t", max_size=2))))
    if "two_lengths" in flaws:
        same = draw(st.booleans()) and any(b"ength:" in line for line in lines)
        digits = draw(st.sampled_from(LENGTH_VALUES[:6]))
        line = next(x for x in lines if b"ength:" in x) if same else length_line(digits)
        insert(line)
    if "framing" in flaws:
        name = draw(st.sampled_from(FRAMING_NAMES[4:]))
        insert(name + b": " + draw(st.sampled_from(FRAMING_VALUES)) + b"\r\n")
    if "fold" in flaws:
        fold = draw(st.sampled_from([b" ", b"\t", b"  "])) + draw(valid_values) + b"\r\n"
        lines.insert(draw(st.integers(0, len(lines))), fold)
    if "bad_line" in flaws:
        insert(draw(odd_lines()))
    if "many" in flaws:
        lines[:0] = [b"X-%d: %d\r\n" % (i, i) for i in range(draw(st.integers(20, 300)))]
    return b"".join(lines)


def finish(draw: st.DrawFn, flaws: frozenset[str], previous: bytes, head: bytes) -> bytes:
    """The buffer: a previous message, the head (its blank line maybe odd), what follows."""
    final = draw(st.sampled_from([b"\n", b"", b"\r", b" \r\n"])) if "final" in flaws else b"\r\n"
    after = draw(st.sampled_from([b"", b"", b"abcde", b"GET / HTTP/1.1\r\n\r\n", b"\r\n"]))
    buf = previous + head + final + after
    if "cut" in flaws:
        buf = buf[: draw(st.integers(len(previous), len(buf)))]
    return buf


previous_messages = st.sampled_from(
    [
        b"",
        b"",
        b"",
        b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /first HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        b"GET /first HTTP/1.1\r\n\r\n\r\n",
        b"garbage\r\n\r\n\r\n",
        b"\r\n",
    ]
)
limits = st.one_of(st.just(BIG), st.just(8192), st.integers(0, 64), st.integers(0, 600))
#: (max_url, max_header_bytes, max_header_count): half the time none binds
limit_sets = st.one_of(st.just((BIG, BIG, BIG)), st.tuples(limits, limits, limits))


@st.composite
def request_bufs(draw: st.DrawFn) -> tuple[bytes, int]:
    """(buf, pos): a previous message, then a request head with a few flaws, then maybe more."""
    flaws = draw_flaws(draw, REQUEST_FLAWS)
    previous = draw(previous_messages)
    spaces = st.sampled_from([b" ", b"", b"  ", b"\t", b" \t"])
    head = b"".join(
        [
            draw(st.sampled_from([b"\r\n", b"\n", b"\r\n\r\n", b" "]))
            if "leading" in flaws
            else b"",
            draw(st.sampled_from(OTHER_METHODS if "method" in flaws else VALID_METHODS)),
            draw(spaces) if "spaces" in flaws else b" ",
            draw(
                odd_targets()
                if "target" in flaws
                else of(TARGET_BYTES, max_size=40).map(b"/".__add__)
            ),
            draw(spaces) if "spaces" in flaws else b" ",
            draw(st.sampled_from(ODD_VERSIONS)) if "version" in flaws else b"HTTP/1.1",
            draw(st.sampled_from(ODD_LINE_ENDS)) if "line_end" in flaws else b"\r\n",
            draw(field_block(flaws, draw(st.booleans()))),
        ]
    )
    return finish(draw, flaws, previous, head), len(previous)


FUZZ = settings(max_examples=FUZZ_EXAMPLES, suppress_health_check=[HealthCheck.too_slow])


@given(request_bufs(), limit_sets)
@FUZZ
def test_requests_from_the_grammar_agree_with_llhttp(
    case: tuple[bytes, int], limit: tuple[int, int, int]
) -> None:
    buf, pos = case
    scan_all_requests(buf, pos, *limit)


# --------------------------------------------------------------------------- valid heads
@dataclass
class ValidRequest:
    """A head inside the subset, with the answer the spec prescribes for it."""

    buf: bytes
    pos: int
    end: int
    method: str
    target: bytes
    headers: list[tuple[bytes, bytes]]
    length: int


@st.composite
def valid_requests(draw: st.DrawFn) -> ValidRequest:
    previous = draw(previous_messages)
    method = draw(st.sampled_from(VALID_METHODS))
    target = b"/" + draw(of(TARGET_BYTES, max_size=40))
    fields: list[tuple[bytes, bytes]] = []
    lines: list[bytes] = []
    for _ in range(draw(st.integers(0, 8))):
        name = draw(st.one_of(st.sampled_from(COMMON_NAMES), of(TCHARS, 1, 12)))
        if name.lower() in FRAMING - CONNECTION:  # Connection is the server's business
            name = b"X-" + name
        value = draw(valid_values)
        fields.append((name.lower(), value))
        lines.append(name + b":" + draw(of(b" \t", max_size=3)) + value + b"\r\n")
    length = -1
    if draw(st.booleans()):
        digits = draw(st.one_of(of(b"0123456789", 1, 4), of(b"0123456789", 1, 18)))
        spelled = draw(st.sampled_from(FRAMING_NAMES[:4]))
        at = draw(st.integers(0, len(fields)))
        lines.insert(at, spelled + b":" + draw(of(b" \t", max_size=2)) + digits + b"\r\n")
        fields.insert(at, (b"content-length", digits))
        length = int(digits)
    head = method + b" " + target + b" HTTP/1.1\r\n" + b"".join(lines) + b"\r\n"
    after = draw(st.sampled_from([b"", b"body!", b"GET /next HTTP/1.1\r\n\r\n"]))
    pos = len(previous)
    return ValidRequest(
        buf=previous + head + after,
        pos=pos,
        end=pos + len(head),
        method=method.decode(),
        target=target,
        headers=fields,
        length=length,
    )


@given(valid_requests())
@FUZZ
def test_valid_requests_are_accepted_as_the_spec_says_and_as_llhttp_reads_them(
    req: ValidRequest,
) -> None:
    result = scan_all_requests(req.buf, req.pos, BIG, BIG, BIG)
    assert result == (req.end, req.method, req.target, req.headers, req.length)
    # the limits bind exactly at the spec's sizes
    size = sum(len(n) + len(v) + 4 for n, v in req.headers)
    count = len(req.headers)
    assert scan_all_requests(req.buf, req.pos, len(req.target), size, count) == result
    assert scan_all_requests(req.buf, req.pos, len(req.target) - 1, size, count) == REFUSED
    assert scan_all_requests(req.buf, req.pos, len(req.target), size - 1, count) == REFUSED
    if count:
        assert scan_all_requests(req.buf, req.pos, len(req.target), size, count - 1) == REFUSED
    # a head cut anywhere before its blank line is incomplete
    for cut in {req.pos, req.pos + 1, (req.pos + req.end) // 2, req.end - 3, req.end - 1}:
        assert scan_all_requests(req.buf[:cut], req.pos, BIG, BIG, BIG) == INCOMPLETE


INTERESTING_BYTES = b"\r\n \t:\x00\x7f\x80\xff/?#%,;0+-Aa"


@st.composite
def mutated(draw: st.DrawFn, original: bytes, start: int) -> bytes:
    """`original` with 1 to 3 bytes inserted, deleted or replaced at or after `start`."""
    buf = bytearray(original)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(min(start, len(buf)), len(buf)))
        byte = draw(st.one_of(st.sampled_from(list(INTERESTING_BYTES)), st.integers(0, 255)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        if op == "insert":
            buf.insert(at, byte)
        elif at < len(buf):
            if op == "delete":
                del buf[at]
            else:
                buf[at] = byte
    return bytes(buf)


@given(st.data(), valid_requests(), limits)
@FUZZ
def test_mutated_valid_requests_agree_with_llhttp(
    data: st.DataObject, req: ValidRequest, max_header_count: int
) -> None:
    buf = data.draw(mutated(req.buf, req.pos))
    scan_all_requests(buf, req.pos, BIG, BIG, max(max_header_count, len(req.headers)))


@given(st.binary(max_size=200), st.binary(max_size=40), st.integers(-2, 250))
@FUZZ
def test_arbitrary_bytes_never_raise_and_agree(prefix: bytes, rest: bytes, pos: int) -> None:
    for buf in (prefix, prefix + END + rest, b"GET /" + prefix + END, b"HTTP/1.1 " + prefix + END):
        scan_all_requests(buf, pos, 64, 512, 8)
        scan_all_requests(buf, 0, BIG, BIG, BIG)
        scan_all_responses(buf, pos, 8)
        scan_all_responses(buf, 0, BIG)


# --------------------------------------------------------------------------- responses
VALID_STATUSES = [b"200", b"201", b"202", b"206", b"299", b"301", b"302", b"400", b"404", b"599"]
ODD_STATUSES = [
    b"100", b"101", b"103", b"199", b"204", b"204", b"304", b"304", b"600", b"000", b"20",
    b"2000", b"2x0", b" 200", b"+20", b"\xd9\xa200", b"",
]  # fmt: skip
REASONS = [b"OK", b"", b"Not Found", b"Whatever You Like", b"\xc3\xa9t\xc3\xa9", b"a\tb", b"OK "]
ODD_REASONS = [b"\x00", b"\x7f", b"\r", b"\n", b"OK\r\nX: 1", b"\x01", b"\x1b[0m"]


@st.composite
def response_bufs(draw: st.DrawFn) -> tuple[bytes, int]:
    """(buf, pos): a previous answer, then an answer head with a few flaws, then maybe more."""
    flaws = draw_flaws(draw, RESPONSE_FLAWS)
    previous = draw(
        st.sampled_from([b"", b"", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", b"xx"])
    )
    head = b"".join(
        [
            draw(st.sampled_from(ODD_VERSIONS)) if "version" in flaws else b"HTTP/1.1",
            b" ",
            draw(st.sampled_from(ODD_STATUSES if "status" in flaws else VALID_STATUSES)),
            draw(st.sampled_from([b"", b"  ", b"\t"])) if "spaces" in flaws else b" ",
            draw(st.sampled_from(ODD_REASONS if "reason" in flaws else REASONS)),
            draw(st.sampled_from(ODD_LINE_ENDS)) if "line_end" in flaws else b"\r\n",
            draw(field_block(flaws, draw(st.integers(0, 5)) > 0)),
        ]
    )
    return finish(draw, flaws, previous, head), len(previous)


@given(response_bufs(), st.one_of(st.just(BIG), st.integers(0, 12)))
@FUZZ
def test_responses_from_the_grammar_agree_with_llhttp(
    case: tuple[bytes, int], max_fields: int
) -> None:
    buf, pos = case
    scan_all_responses(buf, pos, max_fields)


@dataclass
class ValidResponse:
    """An answer head inside the subset, with the answer the spec prescribes for it."""

    buf: bytes
    pos: int
    end: int
    status: int
    headers: list[tuple[bytes, bytes]]
    length: int


@st.composite
def valid_responses(draw: st.DrawFn) -> ValidResponse:
    previous = draw(st.sampled_from([b"", b"", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"]))
    status = draw(st.integers(200, 599).filter(lambda s: s not in (204, 304)))
    reason = draw(of(VALUE_BYTES, max_size=12))
    fields: list[tuple[bytes, bytes]] = []
    lines: list[bytes] = []
    for _ in range(draw(st.integers(0, 8))):
        name = draw(st.one_of(st.sampled_from(COMMON_NAMES), of(TCHARS, 1, 12)))
        if name.lower() in FRAMING:
            name = b"Connection" if draw(st.booleans()) else b"X-" + name
        value = draw(valid_values)
        fields.append((name.lower(), value))
        lines.append(name + b":" + draw(of(b" \t", max_size=3)) + value + b"\r\n")
    digits = draw(st.one_of(of(b"0123456789", 1, 4), of(b"0123456789", 1, 18)))
    at = draw(st.integers(0, len(fields)))
    spelled = draw(st.sampled_from(FRAMING_NAMES[:4]))
    lines.insert(at, spelled + b":" + draw(of(b" \t", max_size=2)) + digits + b"\r\n")
    fields.insert(at, (b"content-length", digits))
    head = b"HTTP/1.1 %d " % status + reason + b"\r\n" + b"".join(lines) + b"\r\n"
    after = draw(st.sampled_from([b"", b"body!", b"HTTP/1.1 200 OK\r\n"]))
    pos = len(previous)
    return ValidResponse(previous + head + after, pos, pos + len(head), status, fields, int(digits))


@given(valid_responses())
@FUZZ
def test_valid_responses_are_accepted_as_the_spec_says_and_as_llhttp_reads_them(
    answer: ValidResponse,
) -> None:
    result = scan_all_responses(answer.buf, answer.pos, BIG)
    assert result == (answer.end, answer.status, answer.headers, answer.length)
    assert scan_all_responses(answer.buf, answer.pos, len(answer.headers)) == result
    assert scan_all_responses(answer.buf, answer.pos, len(answer.headers) - 1) == REFUSED
    for cut in {answer.pos, (answer.pos + answer.end) // 2, answer.end - 3, answer.end - 1}:
        assert scan_all_responses(answer.buf[:cut], answer.pos, BIG) == INCOMPLETE


@given(st.data(), valid_responses())
@FUZZ
def test_mutated_valid_responses_agree_with_llhttp(
    data: st.DataObject, answer: ValidResponse
) -> None:
    scan_all_responses(data.draw(mutated(answer.buf, answer.pos)), answer.pos, BIG)


# --------------------------------------------------------------------------- attack shapes
def request(scanner: ModuleType, buf: bytes, pos: int = 0) -> object:
    result = scanner.scan_request(buf, pos, 1024, 8192, 100)
    check_request_result(buf, pos, result)
    return result


def response(scanner: ModuleType, buf: bytes, pos: int = 0) -> object:
    result = scanner.scan_response(buf, pos, 100)
    check_response_result(buf, pos, result)
    return result


def test_smuggling_pair_content_length_and_transfer_encoding_is_refused(
    scanner: ModuleType,
) -> None:
    buf = (
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    assert request(scanner, buf) == REFUSED
    swapped = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
    assert request(scanner, swapped) == REFUSED


def test_duplicate_content_length_with_equal_values_is_refused(scanner: ModuleType) -> None:
    buf = b"POST /x HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello"
    assert request(scanner, buf) == REFUSED
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
    assert response(scanner, answer) == REFUSED


@pytest.mark.parametrize(
    "value",
    [b"+5", b"-5", b"5 5", b"5,5", b"0x5", b"1234567890123456789", b"", b"\xd9\xa5"],
)
def test_content_length_that_is_not_1_to_18_digits_is_refused(
    scanner: ModuleType, value: bytes
) -> None:
    buf = b"POST /x HTTP/1.1\r\nContent-Length: " + value + b"\r\n\r\nhello"
    assert request(scanner, buf) == REFUSED
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\nhello"
    assert response(scanner, answer) == REFUSED


def test_content_length_plus_five_is_refused(scanner: ModuleType) -> None:
    assert request(scanner, b"POST /x HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello") == REFUSED


def test_content_length_of_18_digits_with_leading_zeros_is_accepted(scanner: ModuleType) -> None:
    buf = b"POST /x HTTP/1.1\r\nContent-Length: 000000000000000005\r\n\r\nhello"
    assert request(scanner, buf) == (
        len(buf) - 5,
        "POST",
        b"/x",
        [(b"content-length", b"000000000000000005")],
        5,
    )


def test_obs_fold_is_refused(scanner: ModuleType) -> None:
    buf = b"GET /x HTTP/1.1\r\nX-A: one\r\n two\r\nHost: a\r\n\r\n"
    assert request(scanner, buf) == REFUSED
    tab = b"GET /x HTTP/1.1\r\nX-A: one\r\n\ttwo\r\n\r\n"
    assert request(scanner, tab) == REFUSED
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: one\r\n two\r\n\r\n"
    assert response(scanner, answer) == REFUSED


def test_bare_lf_line_ends_are_refused(scanner: ModuleType) -> None:
    assert request(scanner, b"GET /x HTTP/1.1\nHost: a\r\n\r\n") == REFUSED
    assert request(scanner, b"GET /x HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n") == REFUSED
    assert request(scanner, b"GET /x HTTP/1.1\nHost: a\n\n") == INCOMPLETE
    answer = b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n"
    assert response(scanner, answer) == REFUSED


def test_bare_cr_is_refused(scanner: ModuleType) -> None:
    assert request(scanner, b"GET /x HTTP/1.1\r\nHost: a\rX-A: b\r\n\r\n") == REFUSED
    assert request(scanner, b"GET /x HTTP/1.1\r\nHost: a\r\r\n\r\n") == REFUSED


def test_nul_in_value_is_refused(scanner: ModuleType) -> None:
    assert request(scanner, b"GET /x HTTP/1.1\r\nHost: a\x00b\r\n\r\n") == REFUSED
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: a\x00\r\n\r\n"
    assert response(scanner, answer) == REFUSED


@pytest.mark.parametrize("byte", [b"\x01", b"\x0b", b"\x1f", b"\x7f"])
def test_control_bytes_in_value_are_refused(scanner: ModuleType, byte: bytes) -> None:
    assert request(scanner, b"GET /x HTTP/1.1\r\nX-A: a" + byte + b"b\r\n\r\n") == REFUSED


def test_header_name_with_space_before_colon_is_refused(scanner: ModuleType) -> None:
    assert request(scanner, b"GET /x HTTP/1.1\r\nHost : a\r\n\r\n") == REFUSED
    buf = b"POST /x HTTP/1.1\r\nContent-Length : 5\r\n\r\nhello"
    assert request(scanner, buf) == REFUSED
    answer = b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n"
    assert response(scanner, answer) == REFUSED


@pytest.mark.parametrize(
    "name", [b"Transfer-Encoding", b"transfer-encoding", b"TRANSFER-ENCODING", b"tRaNsFeR-eNcOdInG"]
)
def test_transfer_encoding_in_any_case_is_refused(scanner: ModuleType, name: bytes) -> None:
    buf = b"POST /x HTTP/1.1\r\n" + name + b": chunked\r\n\r\n0\r\n\r\n"
    assert request(scanner, buf) == REFUSED
    answer = b"HTTP/1.1 200 OK\r\n" + name + b": chunked\r\n\r\n0\r\n\r\n"
    assert response(scanner, answer) == REFUSED


@pytest.mark.parametrize("line", [b"Upgrade: websocket", b"UPGRADE: h2c", b"upgrade: x"])
def test_upgrade_requests_are_left_to_llhttp(scanner: ModuleType, line: bytes) -> None:
    assert request(scanner, b"GET /x HTTP/1.1\r\n" + line + b"\r\n\r\n") == REFUSED


@pytest.mark.parametrize(
    ("line", "keep_alive"),
    [(b"Connection: close", False), (b"connection: keep-alive", True),
     (b"Connection: Keep-Alive, x-foo", True), (b"Proxy-Connection: keep-alive", True),
     (b"CONNECTION: upgrade", True)],
)  # fmt: skip
def test_connection_headers_of_a_request_are_kept_for_the_server(
    scanner: ModuleType, line: bytes, keep_alive: bool
) -> None:
    """The server decides keep-alive from them (HeadScan), as llhttp does."""
    buf = b"GET /x HTTP/1.1\r\nHost: a\r\n" + line + b"\r\n\r\n"
    name, _, value = line.partition(b": ")
    result = request(scanner, buf)
    assert result == (len(buf), "GET", b"/x", [(b"host", b"a"), (name.lower(), value)], -1)
    assert isinstance(result, tuple)
    assert HeadScan(result[3]).keep_alive(b"1.1") is keep_alive
    check_request_result(buf, 0, result)


def test_connection_header_of_an_answer_is_kept(scanner: ModuleType) -> None:
    answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"
    assert response(scanner, answer) == (
        len(answer) - 2,
        200,
        [(b"connection", b"close"), (b"content-length", b"2")],
        2,
    )
    upgrade = b"HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n"
    assert response(scanner, upgrade) == REFUSED


@pytest.mark.parametrize("status", [b"100", b"101", b"103", b"199", b"204", b"304", b"600"])
def test_answers_llhttp_frames_on_its_own_are_refused(scanner: ModuleType, status: bytes) -> None:
    answer = b"HTTP/1.1 " + status + b" X\r\nContent-Length: 0\r\n\r\n"
    assert response(scanner, answer) == REFUSED


def test_answer_without_content_length_is_refused(scanner: ModuleType) -> None:
    assert response(scanner, b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nuntil close") == REFUSED


def test_answer_with_empty_reason_and_obs_text_is_accepted(scanner: ModuleType) -> None:
    answer = b"HTTP/1.1 599 \r\nX-A: \xc3\xa9\tz\r\nContent-Length: 0\r\n\r\n"
    assert response(scanner, answer) == (
        len(answer),
        599,
        [(b"x-a", b"\xc3\xa9\tz"), (b"content-length", b"0")],
        0,
    )
    assert response(scanner, b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n") == REFUSED


def test_head_over_max_header_bytes_is_refused(scanner: ModuleType) -> None:
    buf = b"GET /x HTTP/1.1\r\nHost: example\r\nX-Long:\t" + b"v" * 100 + b"\r\n\r\n"
    size = (4 + 7 + 4) + (6 + 100 + 4)  # name + value + 4 per line, the OWS not counted
    accepted = (len(buf), "GET", b"/x", [(b"host", b"example"), (b"x-long", b"v" * 100)], -1)
    assert scanner.scan_request(buf, 0, 16, size, 2) == accepted
    assert scanner.scan_request(buf, 0, 16, size - 1, 2) == REFUSED
    check_request_result(buf, 0, accepted)


def test_head_over_max_header_count_is_refused(scanner: ModuleType) -> None:
    buf = b"GET /x HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(10)) + b"\r\n"
    accepted = scanner.scan_request(buf, 0, 16, BIG, 10)
    assert accepted == (len(buf), "GET", b"/x", [(b"x-%d" % i, b"v") for i in range(10)], -1)
    assert scanner.scan_request(buf, 0, 16, BIG, 9) == REFUSED
    assert (
        scanner.scan_response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nA: b\r\n\r\n", 0, 1)
        == REFUSED
    )
    check_request_result(buf, 0, accepted)


def test_target_over_max_url_is_refused(scanner: ModuleType) -> None:
    target = b"/" + b"a" * 99
    buf = b"GET " + target + b" HTTP/1.1\r\n\r\n"
    assert scanner.scan_request(buf, 0, 100, BIG, BIG) == (len(buf), "GET", target, [], -1)
    assert scanner.scan_request(buf, 0, 99, BIG, BIG) == REFUSED


def test_pipelined_request_after_another_is_accepted_with_its_end(scanner: ModuleType) -> None:
    first = b"POST /one HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    second = b"GET /two?x=1#frag HTTP/1.1\r\nHost:  a\r\nAccept:\r\n\r\n"
    third = b"DELETE /three HTTP/1.1\r\n"
    buf = first + second + third
    assert request(scanner, buf, len(first)) == (
        len(first) + len(second),
        "GET",
        b"/two?x=1#frag",
        [(b"host", b"a"), (b"accept", b"")],
        -1,
    )
    assert request(scanner, buf, len(first) + len(second)) == INCOMPLETE
    assert request(scanner, buf, 0) == (
        len(first) - 5,
        "POST",
        b"/one",
        [(b"host", b"a"), (b"content-length", b"5")],
        5,
    )


def test_trailing_whitespace_in_a_value_is_refused(scanner: ModuleType) -> None:
    assert request(scanner, b"GET /x HTTP/1.1\r\nHost: a \r\n\r\n") == REFUSED
    assert request(scanner, b"GET /x HTTP/1.1\r\nHost: a\t\r\n\r\n") == REFUSED
    only_ows = b"GET /x HTTP/1.1\r\nX-A:  \t \r\n\r\n"
    assert request(scanner, only_ows) == (len(only_ows), "GET", b"/x", [(b"x-a", b"")], -1)


@pytest.mark.parametrize(
    "line",
    [b"get /x HTTP/1.1", b"CONNECT h:443 HTTP/1.1", b"GET /x HTTP/1.0", b"GET /x HTTP/2.0",
     b"GET /x http/1.1", b"GET  /x HTTP/1.1", b"GET /x  HTTP/1.1", b"GET * HTTP/1.1",
     b"OPTIONS * HTTP/1.1", b"GET http://h/x HTTP/1.1", b"GET /x\x7f HTTP/1.1",
     b"GET /\xc3\xa9 HTTP/1.1", b"GET /x HTTP/1.1 "],
)  # fmt: skip
def test_request_lines_outside_the_subset_are_refused(scanner: ModuleType, line: bytes) -> None:
    assert request(scanner, line + b"\r\nHost: a\r\n\r\n") == REFUSED


def test_leading_empty_line_is_refused(scanner: ModuleType) -> None:
    assert request(scanner, b"\r\nGET /x HTTP/1.1\r\n\r\n") == REFUSED


def test_incomplete_heads(scanner: ModuleType) -> None:
    assert request(scanner, b"") == INCOMPLETE
    assert request(scanner, b"GET /x HTTP/1.1\r\nHost: a\r\n\r") == INCOMPLETE
    assert request(scanner, b"garbage without an end") == INCOMPLETE
    assert request(scanner, b"GET / HTTP/1.1\r\n\r\n", 100) == INCOMPLETE
    assert response(scanner, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n") == INCOMPLETE


def test_negative_pos_is_refused(scanner: ModuleType) -> None:
    """Not in the spec's text: a negative pos is refused (never read from the buffer's end)."""
    assert scanner.scan_request(b"GET / HTTP/1.1\r\n\r\n", -1, 9, 9, 9) == REFUSED
    assert scanner.scan_response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", -1, 9) == REFUSED


# --------------------------------------------------------------------------- join_fields
_FIELDS = st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=200)), max_size=30)


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(first=st.binary(max_size=300), fields=_FIELDS, last=st.binary(max_size=300))
def test_join_fields_writes_one_line_per_field(
    scanner: ModuleType, first: bytes, fields: list[tuple[bytes, bytes]], last: bytes
) -> None:
    joined = scanner.join_fields(first, fields, last)
    lines = b"".join(name + b": " + value + b"\r\n" for name, value in fields)
    assert joined == first + lines + last


@pytest.mark.parametrize(
    "fields", [[(b"a", "b")], [("a", b"b")], [(b"a",)], [(b"a", b"b", b"c")], [b"ab"], "ab"]
)
def test_join_fields_refuses_what_is_not_byte_pairs(scanner: ModuleType, fields: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        scanner.join_fields(b"", fields, b"")


# --------------------------------------------------------------------------- normal_path
_PATHS = st.one_of(
    st.text(alphabet="/.;a~%-@:\n é\\?#", max_size=16).map(lambda t: "/" + t),
    st.text(alphabet="/.;ab", max_size=12),
    st.text(max_size=12),
    st.sampled_from(["/", "//", "/a/", "/a//", "/.", "/..", "/.;x", "/..;x", "/...", "/.a",
                     "/a/./b", "/a/../b", "/a/..", "/a/.", "/%2e", "/a\n", "/\u0100", ""]),
)  # fmt: skip


@pytest.mark.skipif(C_SCAN is None, reason="gateway.http._scan is not built")
@settings(max_examples=FUZZ_EXAMPLES * 3, deadline=None)
@given(path=_PATHS)
def test_normal_path_is_the_fast_pattern_of_normalize(path: str) -> None:
    """The C check of an already-normal path says exactly what normalize.py's pattern says."""
    assert C_SCAN is not None
    assert C_SCAN.normal_path(path) is (normalize._FAST.fullmatch(path) is not None)
