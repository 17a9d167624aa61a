"""The gateway's own cost per request, without sockets: the real server and upstream protocol
objects driven with in-memory transports.

A real `Gateway` (token route with grant and scope checks, a public route, JSON access log on,
metrics) gets one request head per iteration through `HttpServerProtocol.data_received`, which
parses it, runs the pipeline with a cached token and writes the upstream request into a pooled
`UpstreamConnection`; the upstream's answer is then fed to that connection, which relays it to
the client transport. What remains of a real request is the kernel's share (two reads, two
writes) and the event loop's. Prints microseconds per request (noisy on a shared VM);
`bench/instructions.py` runs this under callgrind for counts that do not move between runs.

    .venv/bin/python bench/hotpath.py [--requests 100000] [--path /bench|/public|/limited]
        [--trace-context] [--otlp URL [--sample-ratio 0.01]]

`--trace-context` adds `tracing: {}` without a collector: every request gets a new trace
context (trace-id, upstream traceparent, trace_id in the access line), nothing is recorded.
`--otlp URL` records the sampled requests' spans and exports them to that collector
(bench/otlp_sink.py); the run ends once every span is exported, none dropped, so that the
export thread's work is counted too. Its trace-ids come from a deterministic sequence (`os.urandom`
replaced by a Weyl sequence of 64-bit words) that samples the same share of any run of
requests: callgrind's counts stay comparable between run lengths.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from typing import Any

import uvloop

from gateway import build_kind
from gateway.config import parse_config
from gateway.http.server import HttpServerProtocol
from gateway.http.upstream import UpstreamConnection
from gateway.serve import Gateway

ANSWER = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 22 Nov 2026 11:00:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: 11\r\nConnection: keep-alive\r\n\r\n"
    b'{"ok":true}'
)
WARM_UP = 2000


class MemoryTransport:
    """Just enough of an asyncio transport: writes are kept (the last few), nothing blocks."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)
        if len(self.out) > 64:
            del self.out[:32]

    def writelines(self, data: list[bytes]) -> None:
        for d in data:
            self.write(d)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...

    def is_closing(self) -> bool:
        return False


class Discard(io.RawIOBase):
    """A binary stream that takes every write and keeps nothing."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return len(data)


def deterministic_urandom(n: int) -> bytes:
    """`os.urandom` for the bench: 64-bit words k * 2**64 / golden ratio (mod 2**64), whose
    share below any bound is the bound's share of 2**64 within a fraction of a percent over any
    few thousand consecutive words, so a trace-id's low 64 bits sample `sample_ratio` exactly.
    The words are made once (start-up, which callgrind's difference cancels): a call is a slice."""
    global _weyl_at, _WEYL
    if not _WEYL:  # made on first use (start-up, which callgrind's difference cancels)
        _WEYL = b"".join(
            ((k * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
            for k in range(1, 1 << 17)
        )
    if _weyl_at + n > len(_WEYL):
        _weyl_at = 0
    out = _WEYL[_weyl_at : _weyl_at + n]
    _weyl_at += (n + 7) // 8 * 8
    return out


_WEYL = b""  # only runs with --otlp make it: a megabyte made at import moved every count
_weyl_at = 0


def config(
    trace_context: bool = False, otlp: str | None = None, sample_ratio: float = 0.01
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": None,
        "log": {"format": "json", "access": True},
        "upstreams": {"api": {"url": "http://127.0.0.1:9"}},  # never dialled: one pooled conn
        "routes": [
            {
                "name": "bench",
                "path": "/bench",
                "upstream": "api",
                "grants": ["authorization_code"],
                "scopes": ["bench"],
            },
            {"name": "public", "path": "/public", "upstream": "api", "auth": "public"},
            {
                "name": "limited",
                "path": "/limited",
                "upstream": "api",
                "grants": ["authorization_code"],
                "scopes": ["bench"],
                "rate_limit": "bench",
            },
        ],
        # never reached: the cost of the bookkeeping (local buckets: no Redis here)
        "rate_limits": {"bench": {"key": ["client_id"], "rate": "1000000/s"}},
    }
    if otlp is not None:  # a queue that never overflows: every span is exported and counted
        cfg["tracing"] = {
            "otlp_endpoint": otlp, "sample_ratio": sample_ratio, "max_queue_size": 10**7,
        }  # fmt: skip
    elif trace_context:
        cfg["tracing"] = {}
    return cfg


async def run(
    requests: int,
    path: str,
    trace_context: bool = False,
    otlp: str | None = None,
    sample_ratio: float = 0.01,
) -> float:
    if otlp is not None:
        os.urandom = deterministic_urandom
        # batches leave when full (512 spans) or at the end, never on a wall-clock timer:
        # callgrind's slow clock would otherwise send many small batches
        os.environ["OTEL_BSP_SCHEDULE_DELAY"] = str(3_600_000)
    gw = Gateway(parse_config(config(trace_context, otlp, sample_ratio), env={}))
    await gw.start()
    try:
        rt = gw.runtime
        # the access log is rendered and buffered as usual, and written to a sink that keeps
        # nothing (a growing BytesIO's reallocations, copying all it holds, were counted as
        # per-request cost, more or less of it as the heap happened to be laid out)
        rt.access._stream = Discard()
        token = await rt.validator.issue("authorization_code", "bench-client", "alice", "bench")
        await rt.validator.validate(token)  # cached from here on
        pool = rt.pools["api"]
        upstream = UpstreamConnection(pool, pool.targets[0])
        upstream.connection_made(MemoryTransport())  # type: ignore[arg-type]
        pool.targets[0].count += 1
        pool.release(upstream, True)
        assert gw.ctx is not None
        server = HttpServerProtocol(gw.ctx)
        client = MemoryTransport()
        server.connection_made(client)  # type: ignore[arg-type]
        # As in `make bench`: the token route is asked with the token, the public one without
        credentials = f"Authorization: Bearer {token}\r\n" if path != "/public" else ""
        head = (
            f"GET {path} HTTP/1.1\r\nHost: api.example\r\nUser-Agent: bench\r\n"
            f"Accept: */*\r\n{credentials}\r\n"
        ).encode()

        def one() -> None:
            server.data_received(head)
            upstream.data_received(ANSWER)

        for _ in range(WARM_UP):
            one()
        if not client.out[-1].endswith(b'{"ok":true}') or b" 200 " not in client.out[-1]:
            sys.exit(f"unexpected answer: {client.out[-1][:200]!r}")
        started = time.perf_counter()
        for _ in range(requests):
            one()
        took = time.perf_counter() - started
        if otlp is not None:
            exported(gw)
        return took / requests * 1e6
    finally:
        await gw.close()


def exported(gw: Gateway) -> None:
    """Wait for the export of every span recorded so far; refuse a run that dropped any."""
    recorder = gw.runtime.recorder
    assert recorder is not None
    if not recorder.flush(600):  # type: ignore[attr-defined]
        sys.exit("the spans were not exported within 10 minutes")
    dropped = {
        reason: gw.metrics.spans_dropped.labels(reason)._value.get()
        for reason in ("queue_full", "export_failed")
    }
    if any(dropped.values()):
        sys.exit(f"spans were dropped: {dropped}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--path", default="/bench", choices=["/bench", "/public", "/limited"])
    p.add_argument("--trace-context", action="store_true", help="`tracing: {}` (no collector)")
    p.add_argument("--otlp", metavar="URL", help="record sampled requests, export to URL")
    p.add_argument("--sample-ratio", type=float, default=0.01, help="with --otlp")
    args = p.parse_args()
    us = uvloop.run(run(args.requests, args.path, args.trace_context, args.otlp, args.sample_ratio))
    print(
        f"{args.path}: {us:.1f} us per request without sockets ({build_kind()} build, "
        f"{args.requests} requests after {WARM_UP} to warm up)"
    )


if __name__ == "__main__":
    main()
