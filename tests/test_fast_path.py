"""The fast path (gateway/http/_scan.c in front of llhttp) on real sockets: heads the scanner
takes and heads it leaves to llhttp, mixed on one connection, split anywhere across reads, with
Content-Length bodies, and the smuggling shapes that framing decides. tests/test_scan.py holds
the scanner itself to llhttp; this holds the server and upstream connections that use it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.http import fastscan
from tests.fixtures.servers import base_config
from tests.test_attacks import parse_responses

ROOT = Path(__file__).resolve().parent.parent


def exchange(
    port: int,
    pieces: list[bytes],
    answers: int,
    pause: float = 0.0,
    hold: threading.Event | None = None,
) -> bytes:
    """Send `pieces` (one write each, `pause` between them), then read until `answers` complete
    answers came or the gateway closed; with `hold`, keep the connection open until it is set
    (so that the test can look at the gateway's side of it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces:
            sock.sendall(piece)
            if pause:
                time.sleep(pause)
        out = b""
        while True:
            if len(parse_responses(out, closed=False)) >= answers:
                if hold is not None:
                    hold.wait(10)
                return out
            chunk = sock.recv(65536)
            if not chunk:
                return out
            out += chunk


def echoed(res: Any) -> dict[str, Any]:
    info: dict[str, Any] = orjson.loads(res.body)
    return info


async def test_pipelined_heads_of_both_parsers_are_answered_in_order(
    echo_upstream: Any, make_gateway: Any
) -> None:
    """Scanner heads, then a chunked one (llhttp from there on), then more: one connection, one
    write, every answer in order with the body the upstream got."""
    gw = await make_gateway(base_config(echo_upstream.url))
    burst = (
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nworld\r\n0\r\n\r\n"
        b"GET /d HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbye"
    )
    raw = await asyncio.to_thread(exchange, gw.port, [burst], 5)
    answers = parse_responses(raw, closed=True)
    assert [a.status for a in answers] == [200] * 5
    seen = [echoed(a) for a in answers]
    assert [s["path"] for s in seen] == ["/a", "/b", "/c", "/d", "/e"]
    assert [s["body_size"] for s in seen] == [0, 5, 5, 0, 3]
    assert seen[1]["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert seen[2]["body_sha256"] == hashlib.sha256(b"world").hexdigest()
    assert answers[-1].header("connection") == "close"
    assert echo_upstream.requests == 5


@pytest.mark.parametrize(("pieces", "fast"), [(3, True), (None, False)], ids=["3", "bytes"])
async def test_heads_and_bodies_split_across_reads(
    echo_upstream: Any, make_gateway: Any, pieces: int | None, fast: bool
) -> None:
    """A head in a few reads stays on the fast path; one trickled in a byte at a time goes to
    llhttp after MAX_PARTIAL_READS (a kept head is scanned again on every read: bytes one by
    one would cost its size squared). Both are answered whole, and so is the next request."""
    gw = await make_gateway(base_config(echo_upstream.url))
    request = b"POST /split HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world"
    step = 1 if pieces is None else -(-len(request) // pieces)
    parts = [request[i : i + step] for i in range(0, len(request), step)]
    parts.append(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    hold = threading.Event()
    task = asyncio.create_task(asyncio.to_thread(exchange, gw.port, parts, 2, 0.002, hold))
    while not gw.gateway.ctx.connections:
        await asyncio.sleep(0.002)
    [conn] = gw.gateway.ctx.connections
    hold.set()
    raw = await task
    first, second = parse_responses(raw, closed=False)
    assert echoed(first)["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()
    assert echoed(second)["path"] == "/next"
    if fastscan.NAME != "off":
        assert conn._fast is fast
    assert len(request) > fastscan.MAX_PARTIAL_READS


async def test_a_content_length_body_that_looks_like_a_request_is_a_body(
    echo_upstream: Any, make_gateway: Any
) -> None:
    """Request smuggling by framing: the body is exactly Content-Length bytes, whatever they
    look like, and what follows it is the next request."""
    gw = await make_gateway(base_config(echo_upstream.url))
    inner = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    outer = b"POST /outer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(inner)
    raw = await asyncio.to_thread(
        exchange, gw.port, [outer + inner + b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n"], 2
    )
    first, second = parse_responses(raw, closed=False)
    assert echoed(first)["path"] == "/outer"
    assert echoed(first)["body_sha256"] == hashlib.sha256(inner).hexdigest()
    assert echoed(second)["path"] == "/after"
    assert echo_upstream.requests == 2


@pytest.mark.parametrize(
    "head",
    [
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
        b"GET /x HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
        b"GET /x HTTP/1.1\nHost: x\n\n",
        b"GET /x HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    ],
    ids=["duplicate-cl", "cl-and-te", "signed-cl", "obs-fold", "bare-lf", "two-hosts"],
)
async def test_heads_the_scanner_refuses_are_refused_by_the_gateway(
    echo_upstream: Any, make_gateway: Any, head: bytes
) -> None:
    """What the scanner leaves to llhttp is still refused (400), and never reaches upstream."""
    gw = await make_gateway(base_config(echo_upstream.url))
    raw = await asyncio.to_thread(exchange, gw.port, [head], 1)
    [answer] = parse_responses(raw, closed=True)
    assert answer.status == 400
    assert echo_upstream.requests == 0


# ------------------------------------------------------------------- upstream answers
Script = list[list[bytes]]  # per request on a connection: the pieces of its answer


@pytest.fixture
async def scripted_upstream() -> AsyncIterator[Callable[[Script], Awaitable[Any]]]:
    """An upstream that answers the n-th request of each connection with script[n], written
    piece by piece (a short pause between pieces), and counts connections."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(script: Script) -> Any:
        state = type("State", (), {"port": 0, "connections": 0, "requests": 0})()

        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            state.connections += 1
            writers.append(writer)
            try:
                for answer in script:
                    head = await reader.readuntil(b"\r\n\r\n")
                    assert b"content-length" not in head.lower()  # bodyless requests here
                    state.requests += 1
                    for piece in answer:
                        writer.write(piece)
                        await writer.drain()
                        await asyncio.sleep(0.005)
                await reader.read()
            except (OSError, asyncio.IncompleteReadError):
                pass  # the gateway closed the connection
            finally:
                writer.close()

        server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        servers.append(server)
        state.port = server.sockets[0].getsockname()[1]
        return state

    yield start
    for w in writers:
        w.close()
    for s in servers:
        s.close()
        await s.wait_closed()
    await asyncio.sleep(0.01)


async def test_upstream_answers_split_anywhere_and_mixed_with_chunked_ones(
    scripted_upstream: Any, make_gateway: Any
) -> None:
    """A split head, a split body, then a chunked answer (llhttp from then on) and one more:
    all relayed whole over one upstream connection."""
    first = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\n0123456789"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    last = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    up = await scripted_upstream(
        [[first[:20], first[20:50], first[50:63], first[63:]], [chunked[:30], chunked[30:]], [last]]
    )
    gw = await make_gateway(base_config(f"http://127.0.0.1:{up.port}"))
    requests = [b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(3)]
    bodies = []
    for req in requests:  # one at a time: the upstream connection is reused for each
        raw = await asyncio.to_thread(exchange, gw.port, [req], 1)
        [answer] = parse_responses(raw, closed=False)
        bodies.append((answer.status, answer.body))
    assert bodies == [(200, b"0123456789"), (200, b"abc"), (201, b"ok")]
    assert up.connections == 1


async def test_bytes_after_an_upstream_answer_end_its_connection(
    scripted_upstream: Any, make_gateway: Any
) -> None:
    """An upstream that sends more than its Content-Length (a desync, or a poisoned answer
    waiting for the next request): the client gets exactly the answer, the connection is not
    reused, and the next request gets its own answer from a new connection."""
    poisoned = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON"
    )
    up = await scripted_upstream([[poisoned]])
    gw = await make_gateway(base_config(f"http://127.0.0.1:{up.port}"))
    raw = await asyncio.to_thread(exchange, gw.port, [b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"], 1)
    [answer] = parse_responses(raw, closed=False)
    assert answer.body == b"hi"
    # the script answers one request per connection: a reused one would never answer (504),
    # and a gateway reading on would relay POISON
    raw = await asyncio.to_thread(exchange, gw.port, [b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n"], 1)
    [answer] = parse_responses(raw, closed=False)
    assert (answer.status, answer.body) == (200, b"hi")
    assert up.connections == 2


async def test_an_upstream_answer_with_bare_lf_line_ends_is_not_waited_for(
    scripted_upstream: Any, make_gateway: Any
) -> None:
    """No CRLFCRLF ever comes: llhttp decides at once (here: it reads the answer), no 504."""
    up = await scripted_upstream([[b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi"]])
    gw = await make_gateway(base_config(f"http://127.0.0.1:{up.port}"))
    started = time.monotonic()
    raw = await asyncio.to_thread(exchange, gw.port, [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"], 1)
    [answer] = parse_responses(raw, closed=False)
    assert answer.status in (200, 502)
    assert time.monotonic() - started < 2  # the upstream timeout is 5 s


@pytest.mark.skipif(
    "GATEWAY_HEAD_SCANNER" in os.environ, reason="a run with GATEWAY_HEAD_SCANNER set already"
)
@pytest.mark.parametrize("scanner", ["python", "off"])
def test_the_same_tests_pass_with_the_twin_and_with_no_scanner(scanner: str) -> None:
    """The pure-Python twin on the server's path (what a GATEWAY_PURE_PYTHON=1 build runs), and
    no scanner at all (llhttp for every head, the operator's switch): this module, the attack
    suite and the lingering-close suite, in a fresh interpreter with GATEWAY_HEAD_SCANNER."""
    env = {**os.environ, "GATEWAY_HEAD_SCANNER": scanner}
    files = ["tests/test_fast_path.py", "tests/test_attacks.py", "tests/test_lingering.py"]
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-4000:]
    assert " passed" in res.stdout


def test_an_unknown_head_scanner_is_refused_by_name() -> None:
    env = {**os.environ, "GATEWAY_HEAD_SCANNER": "fast"}
    res = subprocess.run(
        [sys.executable, "-c", "import gateway.http.fastscan"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode != 0
    assert "GATEWAY_HEAD_SCANNER must be one of c, python, off: 'fast'" in res.stderr
