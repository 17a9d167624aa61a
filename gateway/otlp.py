"""The gateway's span records and the OTLP/protobuf body that exports them
(`ExportTraceServiceRequest`), written directly in protobuf's wire format.

The data path records a sampled request's spans as `SpanRecord`s (plain values: ids as hex,
times in ns, an attribute dict of strings and integers); gateway/tracing.py queues them and its
export thread turns each batch into one body here and posts it with the OpenTelemetry SDK's
OTLP/HTTP exporter.

Why not the SDK's encoder: `encode_spans` wants a `ReadableSpan` per span and then builds a
protobuf message per span, attribute and value, about 75 µs a span on the bench machines, all
of it holding the GIL that the event loop needs. Our spans have a fixed, small shape (no events,
no links, string, integer and boolean attributes), so each span is written field by field: in C
(gateway/_trace.c, `encode_span`) when it is built, else by its Python twin here
(`encode_span_py`, byte for byte the same): a few µs a span in compiled Python, under one in C.
The parts that are not the gateway's own (the resource, with what `OTEL_RESOURCE_ATTRIBUTES`
adds, and the instrumentation scope) are encoded once, by the SDK, at start (tracing.py), and
reused as bytes. tests/test_otlp.py holds the bodies to the SDK's
encoding of the same spans, decoded with opentelemetry-proto.

The fields written (opentelemetry/proto/trace/v1/trace.proto), as the SDK writes them: trace_id
(1), span_id (2), trace_state (3, the members as received, without blanks), parent_span_id (4),
name (5), kind (6), start and end (7, 8, fixed64), attributes (9), status (15, present even when
unset, code 2 for an error) and flags (16, fixed32: "has is-remote", and "is remote" when the
parent is the caller's span).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final, TypeAlias

from gateway.spans import SpanRecord
from gateway.tracecontext import RequestTrace

_pack_fixed64 = struct.Struct("<Q").pack
_BYTE: Final = [bytes((n,)) for n in range(256)]  # one-byte values, made once
_INT64_MASK: Final = (1 << 64) - 1
# Span fields: tag bytes (field number << 3 | wire type)
_TRACE_ID: Final = b"\x0a\x10"  # 1, 16 bytes
_SPAN_ID: Final = b"\x12\x08"  # 2, 8 bytes
_TRACE_STATE: Final = b"\x1a"  # 3
_PARENT_ID: Final = b"\x22\x08"  # 4, 8 bytes
_NAME: Final = b"\x2a"  # 5
_KINDS: Final = (b"\x30\x00", b"\x30\x01", b"\x30\x02", b"\x30\x03")  # 6, the kind's number
_START: Final = b"\x39"  # 7, fixed64
_END: Final = b"\x41"  # 8, fixed64
_ATTRIBUTE: Final = b"\x4a"  # 9, a KeyValue
_STATUS_UNSET: Final = b"\x7a\x00"  # 15, an empty Status
_STATUS_ERROR: Final = b"\x7a\x02\x18\x02"  # 15, Status{code: STATUS_CODE_ERROR}
_FLAGS_LOCAL: Final = b"\x85\x01\x00\x01\x00\x00"  # 16, fixed32 0x100: has is-remote
_FLAGS_REMOTE: Final = b"\x85\x01\x00\x03\x00\x00"  # 16, fixed32 0x300: parent is remote
# ScopeSpans.spans (2), ResourceSpans.scope_spans (2), the request's resource_spans (1)
_SPAN: Final = b"\x12"
_OWS: Final = " \t"


def varint(n: int) -> bytes:
    """An unsigned integer as a protobuf varint."""
    if n < 0x80:
        return _BYTE[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag, the payload's length, the payload."""
    n = len(payload)
    return tag + varint(n) + payload


_KEYS: dict[str, bytes] = {}  # attribute key -> its KeyValue.key field (the keys are few)


def _key(key: str) -> bytes:
    encoded = _KEYS.get(key)
    if encoded is None:
        encoded = _KEYS[key] = field(b"\x0a", key.encode())
    return encoded


def trace_state(raw: bytes) -> str:
    """A received (valid) `tracestate` as the span's trace_state: its members joined by `,`."""
    members = [m.strip(_OWS) for m in raw.decode("ascii", "replace").split(",")]
    return ",".join([m for m in members if m])


def encode_span_py(
    trace_id: bytes,
    span_id: str,
    parent: str | None,
    state: str,
    name: str,
    kind: int,
    start: int,
    end: int,
    attributes: dict[str, str | int],
    error: bool,
    remote: bool,
) -> bytes:
    """One Span message: `trace_id` as bytes, `span_id` and `parent` as hex, `state` the
    trace_state ("" for none), `remote` when the parent is the caller's span. The Python twin
    of gateway/_trace.c's `encode_span`. Nested lengths are worked out rather than each level
    joined: one join per span."""
    parts = [_TRACE_ID, trace_id, _SPAN_ID, bytes.fromhex(span_id)]
    if state:
        parts.append(field(_TRACE_STATE, state.encode()))
    if parent is not None:
        parts.append(_PARENT_ID)
        parts.append(bytes.fromhex(parent))
    encoded_name = name.encode()
    parts.append(_NAME)
    parts.append(varint(len(encoded_name)))
    parts.append(encoded_name)
    parts.append(_KINDS[kind])
    parts.append(_START)
    parts.append(_pack_fixed64(start))
    parts.append(_END)
    parts.append(_pack_fixed64(end))
    for key, value in attributes.items():
        # KeyValue{key, value: AnyValue{string_value (1) | bool_value (2) | int_value (3)}}
        encoded_key = _key(key)
        if isinstance(value, str):
            data = value.encode()
            size = len(data)
            head = varint(size)
            any_size = 1 + len(head) + size
            any_head = varint(any_size)
            kv_size = len(encoded_key) + 1 + len(any_head) + any_size
            parts.append(_ATTRIBUTE)
            parts.append(varint(kv_size))
            parts.append(encoded_key)
            parts.append(b"\x12")
            parts.append(any_head)
            parts.append(b"\x0a")
            parts.append(head)
            parts.append(data)
        else:
            tag = b"\x10" if isinstance(value, bool) else b"\x18"
            number = varint(value & _INT64_MASK)
            any_size = 1 + len(number)
            kv_size = len(encoded_key) + 2 + any_size  # any_size < 128: a one-byte length
            parts.append(_ATTRIBUTE)
            parts.append(varint(kv_size))
            parts.append(encoded_key)
            parts.append(b"\x12")
            parts.append(_BYTE[any_size])
            parts.append(tag)
            parts.append(number)
    parts.append(_STATUS_ERROR if error else _STATUS_UNSET)
    parts.append(_FLAGS_REMOTE if remote else _FLAGS_LOCAL)
    return b"".join(parts)


_Encoder: TypeAlias = Callable[
    [bytes, str, str | None, str, str, int, int, int, dict[str, str | int], bool, bool],
    bytes | None,
]


def _c_twin() -> _Encoder | None:
    """gateway._trace.encode_span (gateway/_trace.c), or None in a build without C modules
    (GATEWAY_PURE_PYTHON=1)."""
    try:
        from gateway._trace import encode_span as c_encode
    except ImportError:
        return None
    return c_encode


_C_ENCODE: Final = _c_twin()


def encode_span(span: SpanRecord, trace_id: bytes, state: str) -> bytes:
    """One Span message, written by the C twin when it is built (which returns None for what it
    leaves to the Python one: a subclass, an id that is not 16 hex digits, a lone surrogate, a
    number out of range; that one then gives the message or raises)."""
    if _C_ENCODE is not None:
        encoded = _C_ENCODE(
            trace_id, span.span_id, span.parent, state, span.name, span.kind, span.start,
            span.end, span.attributes, span.error, span.remote_parent,
        )  # fmt: skip
        if encoded is not None:
            return encoded
    return encode_span_py(
        trace_id, span.span_id, span.parent, state, span.name, span.kind, span.start, span.end,
        span.attributes, span.error, span.remote_parent,
    )  # fmt: skip


class Envelope:
    """What every export of one `tracing:` config shares: the resource and the instrumentation
    scope, as the SDK encodes them (their message bytes and schema URLs)."""

    def __init__(self, resource: bytes, resource_schema: str, scope: bytes, scope_schema: str):
        self.resource = field(b"\x0a", resource)  # ResourceSpans.resource (1)
        self.resource_schema = field(b"\x1a", resource_schema.encode()) if resource_schema else b""
        self.scope = field(b"\x0a", scope)  # ScopeSpans.scope (1)
        self.scope_schema = field(b"\x1a", scope_schema.encode()) if scope_schema else b""

    def body(self, spans: list[SpanRecord]) -> bytes:
        """The `ExportTraceServiceRequest` of a batch: one ResourceSpans with one ScopeSpans."""
        parts = [self.scope]
        trace: RequestTrace | None = None
        trace_id = b""
        state = ""
        for span in spans:
            if span.trace is not trace:  # a request's spans are mostly queued together
                trace = span.trace
                trace_id = bytes.fromhex(trace.trace_id)
                state = "" if trace.tracestate is None else trace_state(trace.tracestate)
            encoded = encode_span(span, trace_id, state)
            parts.append(_SPAN)
            parts.append(varint(len(encoded)))
            parts.append(encoded)
        parts.append(self.scope_schema)
        scope_spans = field(b"\x12", b"".join(parts))
        return field(b"\x0a", self.resource + scope_spans + self.resource_schema)
