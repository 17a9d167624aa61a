"""The JSON access line is rendered by hand (no dict, no orjson call per line): it must be the
JSON object orjson would have written for the same fields, whatever the client sent.

It has two twins: gateway/_access.c (built unless GATEWAY_PURE_PYTHON=1) and the Python
`access_line_py`; both are held to orjson, and to each other byte for byte."""

from __future__ import annotations

import os

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import logs
from gateway.http import wire
from gateway.logs import access_line, access_line_py, json_str

PURE = os.environ.get("GATEWAY_PURE_PYTHON") == "1"


def c_twin():
    """gateway._access.access_line. A compiled build without it fails here, it is not skipped."""
    if PURE:
        pytest.skip("GATEWAY_PURE_PYTHON=1: no C modules")
    from gateway._access import access_line as c_line

    return c_line


# Paths and ids as a client can shape them (latin-1 decoded bytes), plus anything unicode
_TEXT = st.one_of(
    st.text(),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
    st.sampled_from(['/a"b', "/a\\b", "/x\ny", "/\u2028", "/\x7f", "/é", "", "/</script>"]),
)


@pytest.mark.parametrize("twin", ["c", "python"])
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
    span_id=st.from_regex(r"[0-9a-f]{16}", fullmatch=True),
    state=st.sampled_from(["", "tracestate: rojo=00f067aa0ba902b7\r\n"]),
)
def test_access_line_is_the_json_object_of_its_fields(
    twin, request_id, client, method, path, route, status, upstream, duration_us, sent, reason,
    trace_id, span_id, state,
):  # fmt: skip
    """The trace-id comes from the request's traceparent line (and its tracestate line, when
    there is one, is not read)."""
    render = c_twin() if twin == "c" else access_line_py
    trace = f"traceparent: 00-{trace_id}-{span_id}-01\r\n{state}" if trace_id else None
    line = render(
        request_id, client, method, path, route, status, upstream, duration_us, sent, reason,
        trace,
    )  # fmt: skip
    assert line is not None  # the C twin left none of these to the Python one
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


def test_the_active_access_line_is_the_c_one_when_built():
    """What AccessLog.record writes with: the C twin in a compiled build."""
    if PURE:
        assert logs._C_ACCESS_LINE is None
    else:
        assert logs._C_ACCESS_LINE is c_twin()


# What a client could send and worse: escapes, line separators, non-BMP, latin-1 bytes, and
# strings long enough, escaped, to outgrow the C twin's 2 KiB stack buffer.
_NASTY_CHAR = st.one_of(
    st.sampled_from(list('"\\\n\r\t\b\f\x00\x1f\x7f\u2028\u2029é\U0001f600/')),
    st.characters(max_codepoint=0x7F),
    st.characters(min_codepoint=0x80, exclude_categories=["Cs"]),
    st.characters(min_codepoint=0x10000),
)
_NASTY = st.one_of(
    _TEXT,
    st.text(_NASTY_CHAR, max_size=40),
    st.builds(
        lambda s, n: s * n, st.text(_NASTY_CHAR, min_size=1, max_size=8), st.integers(1, 700)
    ),
)
_INT64 = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-(10**6), max_value=10**6),
)


@settings(max_examples=1000, deadline=None)
@given(
    strings=st.tuples(*[_NASTY] * 5),
    optional=st.tuples(*[st.one_of(st.none(), _NASTY)] * 3),
    ints=st.tuples(_INT64, _INT64, _INT64),
)
def test_c_and_python_twins_write_the_same_bytes(strings, optional, ints):
    """Any str, the ids too (escaped by both twins), any int64 (negative durations are floor
    divided, as Python's //), any str as the traceparent line (its characters 16 to 48, fewer
    when it is short, counted in characters whatever their UTF-8 size): the C twin writes the
    Python twin's line, byte for byte."""
    c_line = c_twin()
    request_id, client, method, path, route = strings
    upstream, reason, trace_line = optional
    status, duration_us, sent = ints
    args = (
        request_id, client, method, path, route, status, upstream, duration_us, sent, reason,
        trace_line,
    )  # fmt: skip
    line = c_line(*args)
    assert line == access_line_py(*args)
    assert orjson.loads(line)["path"] == path
    if trace_line is not None:
        assert orjson.loads(line)["trace_id"] == trace_line[16:48]


_SURROGATE = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)


@settings(max_examples=200, deadline=None)
@given(
    where=st.integers(0, 7),
    parts=st.tuples(_TEXT, _SURROGATE, _TEXT),
)
def test_a_str_that_is_not_utf8_is_left_to_the_python_twin(where, parts):
    """Lone surrogates in any str (in the trace line, where its trace-id is read, from its
    16th character): the C twin answers None, and access_line raises what the Python twin
    raises (orjson's error, or the encoder's for the ids)."""
    before, surrogates, after = parts
    strings = ["r1", "10.0.0.1", "GET", "/a", "route", "up", "reason", "traceparent: 00-"]
    strings[where] = (before if where < 7 else strings[7]) + surrogates + after
    request_id, client, method, path, route, upstream, reason, trace_id = strings
    args = (
        request_id, client, method, path, route, 200, upstream, 1500, 12, reason, trace_id,
    )  # fmt: skip
    if not PURE:
        assert c_twin()(*args) is None
    with pytest.raises((UnicodeEncodeError, orjson.JSONEncodeError)) as python_raised:
        access_line_py(*args)
    with pytest.raises(python_raised.type):
        access_line(*args)


@pytest.mark.parametrize(
    "args",
    [
        ("r1", "c", "GET", "/", "r", True, None, 5, 0, None),  # bool: str(True) is "True"
        ("r1", "c", "GET", "/", "r", 200, None, 5, 10**30, None),  # past int64
        ("r1", "c", "GET", "/", "r", 200, None, -(2**63) - 1, 0, None),
        ("r1", "c", "GET", "/", "r", 200, None, -1, 0, None),  # floor division: -0.001 is -1.999
    ],
    ids=["bool", "bigint", "below-int64", "negative-duration"],
)
def test_unusual_ints_give_the_python_twins_line(args):
    """Left to the Python twin (a bool, an int outside int64) or written by the C one: the
    line access_line gives is the Python twin's."""
    assert access_line(*args) == access_line_py(*args)
    if not PURE and type(args[5]) is int and all(-(2**63) <= i < 2**63 for i in args[7:9]):
        assert c_twin()(*args) is not None


@pytest.mark.parametrize("escaped", ["\x01", '"', "\U0001f600", "a"])
def test_c_twin_lines_past_its_stack_buffer(escaped):
    """Every byte of a long path escaped (6 bytes for \u0001): the heap buffer, sized right."""
    c_line = c_twin()
    path = "/" + escaped * 5000
    args = ("r", "c", "GET", path, "r", 200, "u", 1, 2, '"' * 3000, "t")
    line = c_line(*args)
    assert line == access_line_py(*args)
    assert orjson.loads(line)["path"] == path


def test_c_twin_takes_10_or_11_arguments():
    c_line = c_twin()
    line = c_line("r", "c", "GET", "/", "r", 200, None, 1500, 7, None)
    assert line == access_line_py("r", "c", "GET", "/", "r", 200, None, 1500, 7, None)
    with pytest.raises(TypeError):
        c_line("r", "c", "GET", "/", "r", 200, None, 1500, 7)


@given(st.text())
def test_json_str_is_a_json_string_literal(value):
    literal = json_str(value)
    assert orjson.loads(literal) == value
    assert "\n" not in literal
