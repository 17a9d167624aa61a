"""The JSON access line is rendered by hand (no dict, no orjson call per line): it must be the
JSON object orjson would have written for the same fields, whatever the client sent."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.http import wire
from gateway.logs import access_line, json_str

# Paths and ids as a client can shape them (latin-1 decoded bytes), plus anything unicode
_TEXT = st.one_of(
    st.text(),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
    st.sampled_from(['/a"b', "/a\\b", "/x\ny", "/\u2028", "/\x7f", "/é", "", "/</script>"]),
)


@settings(max_examples=300, deadline=None)
@given(
    request_id=st.one_of(  # whatever a client sends: kept when well-formed, else minted
        st.none(),
        st.binary(max_size=140),
        st.from_regex(rb"[A-Za-z0-9._:\-]{1,128}", fullmatch=True),
    ).map(wire.request_id),
    client=_TEXT,
    method=_TEXT,
    path=_TEXT,
    route=_TEXT,
    status=st.integers(min_value=100, max_value=599),
    upstream=st.one_of(st.none(), _TEXT),
    duration_us=st.integers(min_value=0, max_value=10**12),
    sent=st.integers(min_value=0, max_value=2**53),
    reason=st.one_of(st.none(), _TEXT),
    trace_id=st.one_of(st.none(), st.from_regex(r"[0-9a-f]{32}", fullmatch=True)),
)
def test_access_line_is_the_json_object_of_its_fields(
    request_id, client, method, path, route, status, upstream, duration_us, sent, reason, trace_id
):
    line = access_line(
        request_id, client, method, path, route, status, upstream, duration_us, sent, reason,
        trace_id,
    )  # fmt: skip
    expected = {
        "event": "access",
        "request_id": request_id,
        **({"trace_id": trace_id} if trace_id is not None else {}),
        "client": client,
        "method": method,
        "path": path,
        "route": route,
        "status": status,
        "upstream": upstream,
        "duration_ms": duration_us / 1000,
        "bytes": sent,
    }
    if reason is not None:
        expected["reason"] = reason
    parsed = orjson.loads(line)
    assert parsed == expected
    assert list(parsed) == list(expected)  # same key order as before
    assert b"\n" not in line and b"\r" not in line  # one line per request, no log injection


@given(st.text())
def test_json_str_is_a_json_string_literal(value):
    literal = json_str(value)
    assert orjson.loads(literal) == value
    assert "\n" not in literal
