"""Upstream and client faults: nothing slow blocks anyone else; connection limits hold."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import Any

import aiohttp
import pytest

from tests.fixtures.servers import base_config, raw_exchange


async def _timed_get(url: str) -> tuple[int, float]:
    started = time.monotonic()
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        await r.read()
        return r.status, time.monotonic() - started


async def test_slow_upstream_does_not_block_other_requests(echo_upstream, make_gateway):
    """While requests hang on a slow upstream path, other requests are answered at once."""
    gw = await make_gateway(base_config(echo_upstream.url))
    slow = [asyncio.create_task(_timed_get(gw.url + "/slow/1.5")) for _ in range(5)]
    await asyncio.sleep(0.1)
    status, elapsed = await _timed_get(gw.url + "/fast")
    assert status == 200
    assert elapsed < 1.0
    assert all(s == 200 for s, _ in await asyncio.gather(*slow))


async def test_slow_client_does_not_block_other_requests(echo_upstream, make_gateway):
    """A client that stops reading a large answer is paused, and others are still served."""
    gw = await make_gateway(base_config(echo_upstream.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET /big/300000000 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")  # then never read the body
    await asyncio.sleep(0.3)
    for _ in range(5):
        status, elapsed = await _timed_get(gw.url + "/other")
        assert status == 200
        assert elapsed < 1.0
    writer.close()


async def test_max_connections_per_upstream_target(echo_upstream, make_gateway):
    """With max_connections: 2, eight concurrent requests share two upstream connections."""
    cfg = base_config(echo_upstream.url)
    cfg["upstreams"]["api"]["max_connections"] = 2
    gw = await make_gateway(cfg)
    results = await asyncio.gather(*(_timed_get(gw.url + "/slow/0.2") for _ in range(8)))
    assert [s for s, _ in results] == [200] * 8
    assert echo_upstream.connections == 2
    assert max(t for _, t in results) >= 0.6  # four rounds of 0.2 s through two connections


async def test_early_answer_before_the_body_is_sent_does_not_reuse_the_connection(make_gateway):
    """An upstream answering before it got the whole request body: that connection is not
    reused, so the next request is not read as the rest of the body (no desync)."""
    seen: list[bytes] = []

    async def naive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # answers each head at once and never reads bodies
                head = await reader.readuntil(b"\r\n\r\n")
                seen.append(head.split(b"\r\n")[0])
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(naive, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    gw = await make_gateway(base_config(f"http://127.0.0.1:{port}"))
    _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"a" * 10)
    await writer.drain()
    await asyncio.sleep(0.3)  # the upstream has answered; 90 body bytes are still due
    out = await raw_exchange(gw.port, b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    writer.close()
    server.close()
    assert out.startswith(b"HTTP/1.1 200")
    assert seen == [b"POST /p HTTP/1.1", b"GET /next HTTP/1.1"]


async def _one_answer_per_connection_upstream(seen: list[bytes]) -> asyncio.Server:
    """Answers the first request of each connection (keep-alive), then closes the connection
    when a second one arrives on it, without answering: a stale kept-alive connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head.split(b"\r\n")[0])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            seen.append(head.split(b"\r\n")[0])
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize(
    ("method", "status", "attempts"),
    [("GET", 200, 2), ("DELETE", 200, 2), ("POST", 502, 1), ("PATCH", 502, 1)],
)
async def test_reset_on_a_kept_alive_connection_retries_only_idempotent_methods(
    make_gateway, method, status, attempts
):
    """A request lost on a stale kept-alive connection is retried once only when idempotent."""
    seen: list[bytes] = []
    server = await _one_answer_per_connection_upstream(seen)
    port = server.sockets[0].getsockname()[1]
    gw = await make_gateway(base_config(f"http://127.0.0.1:{port}"))
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/warm") as r:
            assert r.status == 200
        async with s.request(method, gw.url + "/x") as r:
            assert r.status == status
    server.close()
    assert seen.count(f"{method} /x HTTP/1.1".encode()) == attempts


@pytest.mark.parametrize(
    ("fields", "end", "status"),
    [
        ([(b"x-f%d" % i, b"v") for i in range(499)], True, 200),  # 500 fields with CL
        ([(b"x-big", b"a" * 60_000)], True, 200),  # a large head that ends
        ([(b"x-f%d" % i, b"v") for i in range(500)], True, 502),  # one field more
        # a head still not ended after 64 KiB (the upstream then waits): refused at once,
        # not after the upstream timeout
        ([(b"x-f%d" % i, b"v" * 200) for i in range(340)], False, 502),
        ([(b"x-big", b"a" * 70_000)], False, 502),
        # an upstream that never stops sending fields
        ([(b"x-f%d" % i, b"v" * 100) for i in range(5000)], True, 502),
    ],
)
async def test_an_upstream_answer_head_is_bounded(make_gateway, fields, end, status):
    """An answer head of more than 500 fields, or one still incomplete after 64 KiB, is a 502,
    not memory the upstream may fill; the client sees none of it."""

    done = asyncio.Event()
    handlers: list[asyncio.Task[None]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        await reader.readuntil(b"\r\n\r\n")
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
        head += b"".join(n + b": " + v + b"\r\n" for n, v in fields)
        try:
            writer.write(head + b"\r\nok" if end else head)
            await writer.drain()
            if not end:
                await done.wait()  # the rest never comes
        except ConnectionError:
            pass
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    gw = await make_gateway(base_config(f"http://127.0.0.1:{port}"))
    started = time.monotonic()
    out = await raw_exchange(gw.port, b"GET /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    elapsed = time.monotonic() - started
    done.set()
    await asyncio.gather(*handlers, return_exceptions=True)
    server.close()
    await server.wait_closed()
    assert out.startswith(b"HTTP/1.1 %d" % status), out[:200]
    if status == 502:
        assert b"x-f1:" not in out.lower() and b"x-big" not in out.lower()
        assert elapsed < 3  # not the upstream timeout
    else:
        assert out.endswith(b"ok")


def _stalled_client(port: int, size: int, close: bool) -> socket.socket:
    """A client asking for `size` bytes with a 4 KiB receive buffer, then reading nothing."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    connection = b"Connection: close\r\n" if close else b""
    s.sendall(b"GET /big/%d HTTP/1.1\r\nHost: x\r\n%s\r\n" % (size, connection))
    return s


def _closing_with_buffer(ctx: Any, more_than: int = 0) -> set[Any]:
    """The server's connections closed while more than `more_than` bytes of their answer are
    still in the gateway's buffer (their clients read nothing)."""
    return {
        c for c in ctx.connections
        if c.transport.is_closing() and c.transport.get_write_buffer_size() > more_than
    }  # fmt: skip


@pytest.mark.parametrize("close", [True, False], ids=["connection-close", "keep-alive"])
async def test_a_client_that_stops_reading_a_finished_answer_is_cut_off(
    echo_upstream, make_gateway, close
):
    """A slow-read attack: answers finished but stuck in the gateway's buffers for clients that
    read nothing. A closing connection would wait for them forever (memory and a socket each);
    after `send_timeout` without progress it is reset. Sizes around what the kernel buffers
    hold put some of the answers in the gateway's own buffer when the exchange ends."""
    cfg = base_config(echo_upstream.url)
    cfg["upstreams"]["api"]["timeout"] = "1s"  # answers paused mid-way end on the upstream side
    gw = await make_gateway(cfg)
    ctx = gw.gateway.ctx
    ctx.send_timeout = 0.5
    if not close:  # the idle keep-alive close is the one that waits (its timer: the first)
        ctx.keepalive_timeout = ctx.header_timeout = 0.3
    sizes = range(2_000_000, 6_000_000, 40_000)
    clients = [_stalled_client(gw.port, size, close) for size in sizes]
    try:
        stuck: set[Any] = set()
        for _ in range(60):
            await asyncio.sleep(0.05)
            stuck |= _closing_with_buffer(ctx)
        assert stuck, "no answer was left in the gateway's buffers: the test proves nothing"
        await asyncio.sleep(1.5)  # send_timeout (0.5 s) twice, and then some
        assert len(stuck & ctx.connections) == 0, "a client reading nothing holds its connection"
        assert len(ctx.connections) == 0
    finally:
        for s in clients:
            s.close()


async def test_a_slow_reader_that_keeps_reading_gets_the_whole_answer(echo_upstream, make_gateway):
    """The send timeout counts time without progress, not time in all: a client whose answer
    was left in the gateway's buffers, and that then takes 400 KB every 0.3 s (longer in all
    than `send_timeout`), gets every byte."""
    gw = await make_gateway(base_config(echo_upstream.url))
    ctx = gw.gateway.ctx
    ctx.send_timeout = 0.5
    sizes = range(2_000_000, 6_000_000, 40_000)
    clients = {_stalled_client(gw.port, size, close=True): size for size in sizes}
    try:
        slow = None
        for _ in range(60):  # a client whose answer is finished but partly still in our buffer
            await asyncio.sleep(0.05)
            ports = {
                c.transport.get_extra_info("peername")[1]
                for c in _closing_with_buffer(ctx, more_than=100_000)
            }
            slow = next((s for s in clients if s.getsockname()[1] in ports), None)
            if slow is not None:
                break
        assert slow is not None, "no answer was left in the gateway's buffers"
        size = clients.pop(slow)
        for s in clients:
            s.close()
        clients.clear()
        slow.setblocking(False)
        received, started = 0, time.monotonic()
        while True:
            burst = 0
            while burst < 400_000:  # a little, then a pause shorter than send_timeout
                try:
                    data = slow.recv(65536)
                except BlockingIOError:
                    await asyncio.sleep(0.001)
                    continue
                if not data:
                    break
                burst += len(data)
            received += burst
            if burst < 400_000:
                break
            await asyncio.sleep(0.3)
        assert time.monotonic() - started > 2 * ctx.send_timeout
        assert size < received < size + 1000  # the body and its head
    finally:
        for s in [*clients, *([slow] if slow is not None else [])]:
            s.close()
