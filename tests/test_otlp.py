"""The OTLP bodies the gateway writes itself (gateway/otlp.py) against the OpenTelemetry SDK's
own encoding of the same spans: every record shape, decoded with opentelemetry-proto, must give
the message `encode_spans` gives for the `ReadableSpan` the record stands for."""

from __future__ import annotations

import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from gateway import otlp
from gateway.otlp import encode_span_py
from gateway.spans import KIND_CLIENT, KIND_INTERNAL, KIND_SERVER, SpanRecord
from gateway.tracecontext import RequestTrace
from gateway.tracing import envelope

_KINDS = {
    KIND_INTERNAL: SpanKind.INTERNAL,
    KIND_SERVER: SpanKind.SERVER,
    KIND_CLIENT: SpanKind.CLIENT,
}
RESOURCE = Resource.create({"service.name": "api-gw", "service.version": "1.2.3", "zone": "b"})
SCOPE = InstrumentationScope("oauth-gateway", "1.2.3")


def readable(span: SpanRecord, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
    """The SDK span a record stands for."""
    trace = span.trace
    trace_id = int(trace.trace_id, 16)
    state = (
        None
        if trace.tracestate is None
        else TraceState.from_header([trace.tracestate.decode("ascii")])
    )
    sampled = TraceFlags(TraceFlags.SAMPLED)
    parent = None
    if span.parent is not None:
        remote = span.kind == KIND_SERVER
        parent = SpanContext(
            trace_id,
            int(span.parent, 16),
            is_remote=remote,
            trace_flags=TraceFlags(trace.flags) if remote else sampled,
            trace_state=state,
        )
    return ReadableSpan(
        name=span.name,
        context=SpanContext(
            trace_id, int(span.span_id, 16), False, trace_flags=sampled, trace_state=state
        ),
        parent=parent,
        resource=resource,
        attributes=span.attributes,
        kind=_KINDS[span.kind],
        status=Status(StatusCode.ERROR if span.error else StatusCode.UNSET),
        start_time=span.start,
        end_time=span.end,
        instrumentation_scope=scope,
    )


try:
    from gateway._trace import encode_span as c_encode_span
except ImportError:  # a pure-Python build: the twin alone
    c_encode_span = None


def span_args(span: SpanRecord) -> tuple[Any, ...]:
    state = "" if span.trace.tracestate is None else otlp.trace_state(span.trace.tracestate)
    return (
        bytes.fromhex(span.trace.trace_id), span.span_id, span.parent, state, span.name,
        span.kind, span.start, span.end, span.attributes, span.error, span.remote_parent,
    )  # fmt: skip


def both(
    spans: list[SpanRecord],
    resource: Resource = RESOURCE,
    scope: InstrumentationScope = SCOPE,
) -> tuple[ExportTraceServiceRequest, ExportTraceServiceRequest]:
    ours = ExportTraceServiceRequest.FromString(envelope(resource, scope).body(spans))
    sdk = encode_spans([readable(s, resource, scope) for s in spans])
    return ours, sdk


hex_id = st.integers(1, (1 << 128) - 1).map(lambda n: f"{n:032x}")
span_hex = st.integers(1, (1 << 64) - 1).map(lambda n: f"{n:016x}")
text = st.text(max_size=40)  # any unicode, control characters and astral planes included
key_text = st.text(string.ascii_lowercase + "._", min_size=1, max_size=30)
value = st.one_of(text, st.integers(-(1 << 63), (1 << 63) - 1), st.booleans())
member_key = st.text(string.ascii_lowercase + string.digits + "_-*/", min_size=0, max_size=8)
member_value = st.text(
    "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in ",="), min_size=1, max_size=10
)
members = st.lists(
    st.tuples(
        st.sampled_from(string.ascii_lowercase),
        member_key,
        member_value,
        st.sampled_from(["", " ", "\t "]),
    ),
    max_size=5,
    unique_by=lambda m: m[0] + m[1],
)


@st.composite
def records(draw: st.DrawFn) -> SpanRecord:
    trace_id = draw(hex_id)
    remote = draw(st.booleans())
    state = draw(members)
    trace = RequestTrace(trace_id, draw(span_hex), draw(st.integers(0, 255)), remote, "")
    if state:
        pad = draw(st.sampled_from(["", " ", ", ,"]))
        trace.tracestate = (
            pad + ",".join(f"{ws}{a}{k}={v}{ws}" for a, k, v, ws in state) + pad
        ).encode()
    kind = draw(st.sampled_from([KIND_SERVER, KIND_INTERNAL, KIND_CLIENT]))
    # a server span's parent is the caller's span, when the request came with a context
    parent = (trace.parent_id if remote else None) if kind == KIND_SERVER else draw(span_hex)
    start = draw(st.integers(0, (1 << 64) - 1))
    span = SpanRecord(
        trace,
        draw(text),
        kind,
        draw(span_hex),
        parent,
        draw(st.dictionaries(key_text, value, max_size=12)),
        start,
    )
    span.end = draw(st.integers(start, (1 << 64) - 1))
    span.error = draw(st.booleans())
    return span


@settings(max_examples=300, deadline=None)
@given(st.lists(records(), min_size=1, max_size=6))
def test_bodies_decode_as_the_sdk_encodes(spans: list[SpanRecord]) -> None:
    """The body (written by the C encoder when built) is the SDK's message, and the C encoder
    and its Python twin write the same bytes for every span."""
    ours, sdk = both(spans)
    assert ours == sdk
    for span in spans:
        twin = encode_span_py(*span_args(span))
        if c_encode_span is not None:
            assert c_encode_span(*span_args(span)) == twin


class Text(str):
    pass


class Number(int):
    pass


def test_c_encoder_leaves_odd_inputs_to_the_twin() -> None:
    """What the C encoder does not take it answers None (never a wrong message), and the twin
    then gives the message or raises."""
    if c_encode_span is None:
        pytest.skip("a pure-Python build")
    trace = RequestTrace("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1, False, "")
    good = SpanRecord(trace, "GET", KIND_CLIENT, "a1b2c3d4e5f60718", None, {"k": "v"}, 5)
    args = list(span_args(good))
    assert c_encode_span(*args) == encode_span_py(*args)
    odd: list[tuple[int, Any]] = [
        (1, "a1b2c3d4e5f6071"),  # 15 hex digits
        (1, "a1b2c3d4e5f6071g"),
        (1, Text("a1b2c3d4e5f60718")),
        (2, "00f067aa0ba902b"),
        (4, "bad \udc80 name"),  # a lone surrogate
        (4, Text("GET")),
        (5, 4),  # no such kind
        (6, -1),
        (7, 1 << 64),
        (8, {"k": 1.5}),
        (8, {"k": 1 << 63}),
        (8, {"k": Number(3)}),
        (8, {"k": Text("v")}),
        (8, {7: "v"}),
        (8, {"k": "\udc80"}),
        (9, 1),  # not a bool
    ]
    for index, value in odd:
        changed = list(args)
        changed[index] = value
        assert c_encode_span(*changed) is None, (index, value)
    # the twin: the same message for a subclass, an error for what cannot be encoded
    subclass = list(args)
    subclass[4] = Text("GET")
    assert encode_span_py(*subclass) == encode_span_py(*args)
    surrogate = list(args)
    surrogate[4] = "bad \udc80 name"
    with pytest.raises(UnicodeEncodeError):
        encode_span_py(*surrogate)
    # more attributes than the C encoder keeps on its stack
    many = list(args)
    many[8] = {f"k{i}": i if i % 2 else "v" * i for i in range(40)}
    assert c_encode_span(*many) == encode_span_py(*many)


def test_a_request_s_spans_as_the_gateway_records_them() -> None:
    """The three spans of a recorded request with a caller's context (what tracing.py
    records), field by field, and equal to the SDK's."""
    trace = RequestTrace("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1, True, "")
    trace.tracestate = b"congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"
    server = SpanRecord(
        trace,
        "GET /orders/{id}",
        KIND_SERVER,
        "a1b2c3d4e5f60718",
        trace.parent_id,
        {"http.request.method": "GET", "url.path": "/orders/7", "server.port": 8443},
        1_700_000_000_000_000_000,
    )
    server.end = server.start + 1_500_000
    lookup = SpanRecord(
        trace, "token lookup", KIND_INTERNAL, "1111111111111111", server.span_id,
        {"gateway.cache": "hit"}, server.start + 1000,
    )  # fmt: skip
    upstream = SpanRecord(
        trace, "GET", KIND_CLIENT, "2222222222222222", server.span_id,
        {"http.response.status_code": 503, "error.type": "503"}, server.start + 2000,
    )  # fmt: skip
    upstream.error = True
    ours, sdk = both([server, lookup, upstream])
    assert ours == sdk
    (resource_spans,) = ours.resource_spans
    attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert attributes["service.name"] == "api-gw" and attributes["zone"] == "b"
    (scope_spans,) = resource_spans.scope_spans
    assert (scope_spans.scope.name, scope_spans.scope.version) == ("oauth-gateway", "1.2.3")
    got = {s.name: s for s in scope_spans.spans}
    first = got["GET /orders/{id}"]
    assert first.trace_id.hex() == trace.trace_id
    assert first.parent_span_id.hex() == "00f067aa0ba902b7"
    assert first.flags == 0x300  # the parent is the caller's span
    assert first.trace_state == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    assert first.kind == 2 and first.end_time_unix_nano - first.start_time_unix_nano == 1_500_000
    assert got["token lookup"].flags == 0x100 and got["token lookup"].kind == 1
    assert got["GET"].status.code == 2 and got["token lookup"].status.code == 0
    ints = {a.key: a.value.int_value for a in got["GET"].attributes}
    assert ints["http.response.status_code"] == 503


def test_schema_urls_and_a_large_batch() -> None:
    """Resource and scope schema URLs are carried; a 512-span batch (lengths past one varint
    byte at every level) decodes to the SDK's message."""
    resource = Resource(
        {"service.name": "x" * 300}, schema_url="https://opentelemetry.io/schemas/1.21.0"
    )
    scope = InstrumentationScope("oauth-gateway", "9", schema_url="https://example.test/scope")
    trace = RequestTrace("0" * 31 + "1", "0" * 15 + "1", 0, False, "")
    spans = []
    for i in range(512):
        span = SpanRecord(
            trace, f"span {i}" * (i % 40), KIND_CLIENT, f"{i + 1:016x}", "00000000000000ff",
            {"k": "v" * i, "n": -i}, i,
        )  # fmt: skip
        spans.append(span)
    ours, sdk = both(spans, resource, scope)
    assert ours == sdk
    assert ours.resource_spans[0].schema_url == "https://opentelemetry.io/schemas/1.21.0"
    assert len(ours.resource_spans[0].scope_spans[0].spans) == 512


def test_varint_matches_protobuf() -> None:
    from google.protobuf.internal.encoder import _VarintBytes  # protobuf's own, as reference

    for n in [0, 1, 127, 128, 300, 16383, 16384, 2**32, 2**63, 2**64 - 1]:
        assert otlp.varint(n) == _VarintBytes(n)
