"""W3C Trace Context (`traceparent` / `tracestate`): the context a request carries and passes
upstream, and the hooks through which a sampled request's spans are recorded.

Without `tracing:` only a request that carries a `traceparent` pays anything: a valid one (and
its `tracestate`) is passed upstream unchanged, an invalid one is dropped (upstream_headers.py).
With it, every request gets a context (the incoming one, or a new trace) and sampling is decided
at once from the trace-id, as ParentBased(TraceIdRatioBased) would. Most requests (no incoming
`traceparent`, a new trace that is not sampled) get only the `traceparent` line the upstream
receives, in one C call (`RequestTracer.quiet_line`; the access log reads the trace-id from the
line); the others get a `RequestTrace` (`RequestTracer.begin`), and a sampled one a
`Recording`, whose spans gateway/tracing.py records and exports. Calls
made on a request's behalf (IdP, JWKS, Redis) open their span through `client_span()`, which
finds the request's span in a context variable and is a no-op object otherwise.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Final, Protocol, TypeAlias
from urllib.parse import urlsplit

from gateway.authn.info import TokenInfo
from gateway.errors import GatewayError

TRACEPARENT: Final = b"traceparent"
TRACESTATE: Final = b"tracestate"

# version "-" trace-id "-" parent-id "-" flags, then (future versions only) "-" and anything
_TRACEPARENT: Final = re.compile(
    rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL
)
_ZERO_TRACE: Final = b"0" * 32
_ZERO_PARENT: Final = b"0" * 16
# tracestate list members (W3C Trace Context Level 1): simple or multi-tenant keys
_KEY: Final = re.compile(
    rb"[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}"
)
_VALUE: Final = re.compile(rb"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_MAX_MEMBERS: Final = 32
_OWS: Final = b" \t"
_ID_BYTES: Final = 24  # a new trace's random trace-id (16) and span-id (8)
#: new traces' ids read at once; their slots (0-255) are ints CPython keeps made, so that
#: passing one to C allocates nothing
_POOL_SLOTS: Final = 256
_POOL_BYTES: Final = _ID_BYTES * _POOL_SLOTS
_ZERO_TRACE_BYTES: Final = bytes(16)
_ZERO_SPAN_BYTES: Final = bytes(8)


class Recording(Protocol):
    """The spans of one sampled request (made by gateway/tracing.py)."""

    def cache_hit(self, info: TokenInfo) -> None:
        """The token was answered by the in-process cache: the token lookup's span says so."""

    async def lookup(self, pending: Awaitable[TokenInfo]) -> TokenInfo:
        """Await the token's lookup (cache, Redis, sources) inside its own span."""

    def upstream(self, method: str, upstream: str, address: str | None, port: int) -> str:
        """Start the upstream exchange's span; the `traceparent` value naming it as parent."""

    def end(self, status: int, reason: str | None, template: str | None) -> None:
        """The exchange is over: end its spans (`template` is the route's `http.route`)."""


class Recorder(Protocol):
    """Starts the recording of a sampled request (gateway/tracing.py, with the SDK)."""

    #: TraceIdRatioBased's bound for the configured ratio
    bound: int

    async def close(self) -> None:
        """Export what is queued (bounded wait), then stop."""

    def start(
        self, trace: RequestTrace, method: str, path: str, host: str | None, scheme: str
    ) -> Recording | None:
        """The request's server span (None: not recorded after all)."""


class RequestTrace:
    """One request's trace context: what the access log shows and the upstream receives."""

    __slots__ = (
        "_parent_id",
        "flags",
        "lines",
        "recording",
        "remote",
        "trace_id",
        "tracestate",
    )

    def __init__(
        self, trace_id: str, parent_id: str | None, flags: int, remote: bool, lines: str
    ) -> None:
        self.trace_id = trace_id  # 32 lower-case hex digits
        #: the caller's span (remote), else the id sent upstream; None: the span-id of the
        #: gateway's own traceparent in `lines` (a new trace that is not recorded, so that its
        #: lines never change: the id is sliced from them only if asked for)
        self._parent_id = parent_id
        self.flags = flags
        self.remote = remote  # the context came with the request
        #: the header lines the upstream receives, rendered once ("traceparent: ...\r\n", then
        #: "tracestate: ...\r\n" when there is one): the incoming values unchanged, or the
        #: gateway's own traceparent
        self.lines = lines
        self.tracestate: bytes | None = None  # the valid incoming tracestate
        self.recording: Recording | None = None  # sampled: the request's spans

    @property
    def parent_id(self) -> str:
        """The caller's span (a context that came with the request), else the gateway's span
        the upstream is told is its parent."""
        parent_id = self._parent_id
        return parent_id if parent_id is not None else self.lines[49:65]

    @property
    def traceparent(self) -> bytes:
        """The `traceparent` value the upstream receives."""
        lines = self.lines
        return lines[13 : lines.index("\r\n")].encode("latin-1")

    def keep_state(self, tracestate: bytes) -> None:
        """The incoming `tracestate` (valid) goes upstream too."""
        self.tracestate = tracestate
        self.lines += "tracestate: " + tracestate.decode("latin-1") + "\r\n"

    def set_upstream_parent(self, traceparent: str) -> None:
        """The upstream's parent is the gateway's span `traceparent` names (a recorded
        request); the tracestate goes on as it came."""
        state = self.tracestate
        lines = "traceparent: " + traceparent + "\r\n"
        self.lines = (
            lines if state is None else lines + "tracestate: " + state.decode("latin-1") + "\r\n"
        )


def parse_traceparent(raw: bytes) -> RequestTrace | None:
    """A `traceparent` value as W3C Trace Context reads it, or None when it is invalid.

    Version 00 is exactly 55 characters; a later version (not `ff`) is read as far as version
    00 goes, and must continue with `-` if it continues at all. Lower-case hex only; an
    all-zero trace-id or parent-id is invalid. The value passed on is the one received."""
    value = raw.strip(_OWS)
    m = _TRACEPARENT.fullmatch(value)
    if m is None:
        return None
    version = m.group(1)
    if version == b"ff" or (version == b"00" and m.group(5) is not None):
        return None
    trace_id, parent_id = m.group(2), m.group(3)
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_PARENT:
        return None
    flags = int(m.group(4), 16)
    lines = "traceparent: " + value.decode("latin-1") + "\r\n"
    return RequestTrace(trace_id.decode(), parent_id.decode(), flags, True, lines)


def valid_tracestate(values: list[bytes]) -> bytes | None:
    """The `tracestate` to pass on (several fields joined by `,`), or None when it is empty or
    invalid: more than 32 members, a key or value outside the grammar, a key twice."""
    keys: set[bytes] = set()
    kept: list[bytes] = []
    for value in values:
        members = 0
        for part in value.split(b","):
            member = part.strip(_OWS)
            if not member:
                continue  # empty members are allowed
            key, eq, val = member.partition(b"=")
            if not eq or _KEY.fullmatch(key) is None or _VALUE.fullmatch(val) is None:
                return None
            if key in keys or len(keys) >= _MAX_MEMBERS:
                return None
            keys.add(key)
            members += 1
        if members:
            kept.append(value)
    if not kept:
        return None
    return kept[0] if len(kept) == 1 else b",".join(kept)


def incoming(
    traceparent: bytes, count: int, tracestates: list[bytes] | None
) -> RequestTrace | None:
    """The context a request came with: exactly one valid `traceparent` (two are invalid), and
    its `tracestate` when valid; a `tracestate` without a valid `traceparent` is ignored."""
    if count != 1:
        return None
    trace = parse_traceparent(traceparent)
    if trace is not None and tracestates is not None:
        state = valid_tracestate(tracestates)
        if state is not None:
            trace.keep_state(state)
    return trace


def scan(headers: list[tuple[bytes, bytes]]) -> RequestTrace | None:
    """The incoming context found in a request's headers (names lower-case)."""
    parent = b""
    count = 0
    states: list[bytes] | None = None
    for header in headers:
        name = header[0]
        size = len(name)  # most names are neither length: no comparison
        if size == 11 and name == TRACEPARENT:
            parent = header[1]
            count += 1
        elif size == 10 and name == TRACESTATE:
            states = [header[1]] if states is None else [*states, header[1]]
    return incoming(parent, count, states) if count else None


def new_traceparent_py(pool: bytes, slot: int, below: int, sample_all: bool) -> str | None:
    """The `traceparent` header line of a new trace ("traceparent: 00-<trace-id>-<span-id>-<flags>
    \r\n") from the 24 random bytes of `pool`'s `slot` (at slot * 24): sampled when
    `sample_all` or when the trace-id's low 64 bits are below `below` (TraceIdRatioBased); None
    when an id is all zeros (invalid). The Python twin of gateway/_trace.c's `new_traceparent`."""
    at = slot * _ID_BYTES
    ids = pool[at : at + _ID_BYTES] if slot >= 0 else b""
    trace_id, span_id = ids[:16], ids[16:]
    if len(ids) != _ID_BYTES or trace_id == _ZERO_TRACE_BYTES or span_id == _ZERO_SPAN_BYTES:
        return None
    sampled = sample_all or int.from_bytes(trace_id[8:], "big") < below
    flags = "01" if sampled else "00"
    return f"traceparent: 00-{trace_id.hex()}-{span_id.hex()}-{flags}\r\n"


def quiet_traceparent_py(
    headers: list[tuple[bytes, bytes]], pool: bytes, slot: int, below: bytes
) -> str | None:
    """The line of a new trace that is not sampled (`below`: TraceIdRatioBased's bound as 8
    big-endian bytes), for a request without a `traceparent` field; None otherwise (an incoming
    context, a sampled or invalid new trace), which `RequestTracer.begin` handles. The Python
    twin of gateway/_trace.c's `quiet_traceparent`."""
    for header in headers:
        if header[0] == TRACEPARENT:
            return None
    if len(below) != 8:
        return None
    line = new_traceparent_py(pool, slot, int.from_bytes(below, "big"), False)
    return line if line is not None and line[67] == "0" else None


_NewTraceparent: TypeAlias = Callable[[bytes, int, int, bool], str | None]
_QuietTraceparent: TypeAlias = Callable[[list[tuple[bytes, bytes]], bytes, int, bytes], str | None]


def _twins() -> tuple[_NewTraceparent | None, _QuietTraceparent]:
    """gateway._trace's `new_traceparent` and `quiet_traceparent` (gateway/_trace.c); in a
    build without C modules (GATEWAY_PURE_PYTHON=1), None and the Python twin."""
    try:
        from gateway._trace import new_traceparent, quiet_traceparent
    except ImportError:
        return None, quiet_traceparent_py
    return new_traceparent, quiet_traceparent


_TWINS: Final = _twins()
_C_NEW_TRACEPARENT: Final = _TWINS[0]
_QUIET_TRACEPARENT: Final = _TWINS[1]


class RequestTracer:
    """Gives every request a trace context (`tracing:` configured); one per runtime."""

    def __init__(self, recorder: Recorder | None, bound: int) -> None:
        self.recorder = recorder  # None: contexts are propagated, nothing is recorded
        if recorder is None:
            bound = 0  # propagated only: no new trace is sampled
        self.sample_all = bound >= 1 << 64  # ratio 1: every new trace
        #: TraceIdRatioBased's bound: a new trace is sampled when its id's low 64 bits are below
        self.below = 0 if self.sample_all else bound
        self._below_bytes = self.below.to_bytes(8, "big")  # the same for quiet_traceparent
        self._pool = b""  # random bytes: 24 (trace-id, span-id) per new trace
        self._next = _POOL_SLOTS  # the next slot of the pool (all used: read a new pool)

    def _slot(self) -> int:
        """The pool's next unused slot (a new pool once all are used), not taken yet."""
        slot = self._next
        if slot >= _POOL_SLOTS:
            self._pool = os.urandom(_POOL_BYTES)
            self._next = slot = 0
        return slot

    def quiet_line(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        """Most requests in one step: no incoming `traceparent` and a new trace that is not
        sampled get only the line the upstream receives (no `RequestTrace`; the trace-id is
        its [16:48]). None: `begin()` gives the request its context (the same new ids, when
        it starts a trace)."""
        if self.sample_all:
            return None
        slot = self._slot()
        line = _QUIET_TRACEPARENT(headers, self._pool, slot, self._below_bytes)
        if line is not None:
            self._next = slot + 1
        return line

    def begin(
        self,
        headers: list[tuple[bytes, bytes]],
        method: str,
        path: str,
        host: str | None,
        scheme: str,
    ) -> RequestTrace:
        """The request's context: the valid incoming one (its sampled flag decides), or a new
        trace (sampled by its trace-id); a sampled one is recorded."""
        trace = scan(headers)
        if trace is None:
            trace = self.new_trace()
        if trace.flags & 1:
            recorder = self.recorder
            if recorder is not None:
                trace.recording = recorder.start(trace, method, path, host, scheme)
        return trace

    def new_trace(self) -> RequestTrace:
        """A new trace-id and span-id, sampled by the trace-id. The ids come from a block of
        random bytes read at once (one `os.urandom` per 256 traces); the header line the
        upstream receives is written from them in one step (in C when built), and the ids are
        slices of it."""
        slot = self._slot()
        self._next = slot + 1
        line = None
        if _C_NEW_TRACEPARENT is not None:
            line = _C_NEW_TRACEPARENT(self._pool, slot, self.below, self.sample_all)
        if line is None:
            line = new_traceparent_py(self._pool, slot, self.below, self.sample_all)
            if line is None:
                return self.new_trace()  # all zeros is invalid (one chance in 2**64)
        # "traceparent: 00-" trace-id (16:48) "-" span-id (49:65) "-" flags (66:68) "\r\n".
        # The upstream's parent is that span-id unless the request is recorded (then its
        # client span: set_upstream_parent, so the span-id is kept apart from the line).
        if line[67] == "1":
            return RequestTrace(line[16:48], line[49:65], 1, False, line)
        return RequestTrace(line[16:48], None, 0, False, line)


# -- spans of calls made on a request's behalf ----------------------------------------------


class SpanScope(Protocol):
    """The span that calls made now belong to (a request's token lookup)."""

    def child(self, name: str, attributes: dict[str, str | int]) -> ChildSpan:
        """A client span for one call."""

    def note(self, key: str, value: str) -> None:
        """An attribute of the scope's own span."""


class ChildSpan(Protocol):
    def set(self, key: str, value: str | int) -> None:
        """An attribute."""

    def end(self, error: str | None) -> None:
        """End the span; `error` is the error type when the call failed."""


#: set by the recording around a request's token lookup; tasks started inside inherit it
SCOPE: Final[ContextVar[SpanScope | None]] = ContextVar("gateway_span_scope", default=None)


class ClientSpan:
    """`with ClientSpan(name, attributes) as span:` around one IdP, JWKS or Redis call: a span
    when the call is made for a recorded request, nothing otherwise."""

    __slots__ = ("span",)

    def __init__(self, name: str, attributes: dict[str, str | int]) -> None:
        scope = SCOPE.get()
        self.span: ChildSpan | None = scope.child(name, attributes) if scope is not None else None

    def __enter__(self) -> ClientSpan:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        span = self.span
        if span is not None:
            self.span = None
            span.end(None if exc is None else error_type(exc))

    def set(self, key: str, value: str | int) -> None:
        span = self.span
        if span is not None:
            span.set(key, value)


def http_call_attributes(method: str, url: str) -> dict[str, str | int]:
    """What the span of an HTTP call to `url` says: the server and path, never the query or
    credentials."""
    parts = urlsplit(url)
    return {
        "http.request.method": method,
        "server.address": parts.hostname or "",
        "server.port": parts.port or (443 if parts.scheme == "https" else 80),
        "url.path": parts.path,
    }


def note(key: str, value: str) -> None:
    """An attribute of the current scope's span (the token lookup), when there is one."""
    scope = SCOPE.get()
    if scope is not None:
        scope.note(key, value)


def error_type(exc: BaseException) -> str:
    """What a span says about a failure: the gateway's stable reason, or the exception's type
    (never its message, which may quote a value)."""
    if isinstance(exc, GatewayError):
        return exc.reason
    return type(exc).__name__
