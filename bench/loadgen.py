"""Load generation: wrk when installed, else a built-in asyncio (uvloop) closed-loop generator.

Both return a `LoadResult` (requests, req/s, p50/p99 in ms, non-2xx, socket errors). The
built-in one keeps `connections` keep-alive connections each with one request in flight, like
`wrk -c`; it is slower than wrk, so its figures only compare within one run.

    python bench/loadgen.py --url http://127.0.0.1:8080/x -c 32 -d 5 -H 'Authorization: Bearer T'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

WRK = shutil.which("wrk")


@dataclass
class LoadResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    errors: int  # socket errors (connect, read, write, timeout)


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if m is None:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> LoadResult:
    """Read wrk's `--latency` report."""
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if m is None:
        raise RuntimeError(f"wrk printed no totals:\n{out}")
    requests = int(m.group(1))
    seconds = _ms(m.group(2) + m.group(3)) / 1000
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return LoadResult(
        requests=requests,
        seconds=seconds,
        rps=float(rps.group(1)) if rps else requests / seconds,
        p50_ms=_ms(p50.group(1)) if p50 else float("nan"),
        p99_ms=_ms(p99.group(1)) if p99 else float("nan"),
        non2xx=int(non2xx.group(1)) if non2xx else 0,
        errors=sum(int(x) for x in sock.groups()) if sock else 0,
    )


def wrk_argv(
    url: str,
    seconds: float,
    connections: int,
    headers: dict[str, str],
    script: Path | None = None,
    threads: int = 1,
) -> list[str]:
    assert WRK is not None
    argv = [WRK, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    for k, v in headers.items():
        argv += ["-H", f"{k}: {v}"]
    if script is not None:
        argv += ["-s", str(script)]
    return [*argv, url]


def post_script(path: Path, size: int) -> Path:
    """A wrk Lua script turning its requests into POSTs of `size` bytes."""
    path.write_text(
        'wrk.method = "POST"\n'
        f'wrk.body = string.rep("x", {size})\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
    )
    return path


def run_wrk(argv: list[str], seconds: float) -> LoadResult:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


# -- the built-in generator -------------------------------------------------------------------


class _Conn(asyncio.Protocol):
    """One keep-alive connection sending `request` again as soon as the answer is complete."""

    def __init__(self, gen: _Gen) -> None:
        import httptools

        self.gen = gen
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.sent = 0.0
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        if self.gen.stopping or self.transport is None:
            if self.transport is not None:
                self.transport.close()
            return
        self.sent = time.perf_counter()
        self.transport.write(self.gen.request)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:
            self.gen.errors += 1
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        self.gen.record(time.perf_counter() - self.sent, self.parser.get_status_code())
        if self.parser.should_keep_alive():
            self._send()
        elif self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.lost.done():
            self.lost.set_result(None)


class _Gen:
    def __init__(self, request: bytes) -> None:
        self.request = request
        self.stopping = False
        self.latencies: list[float] = []
        self.non2xx = 0
        self.errors = 0

    def record(self, seconds: float, status: int) -> None:
        self.latencies.append(seconds)
        if not 200 <= status < 300:
            self.non2xx += 1


async def _builtin(
    url: str, seconds: float, connections: int, headers: dict[str, str], method: str, body: bytes
) -> LoadResult:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = [f"{method} {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1"]
    head.append(f"Host: {parts.netloc}")
    head += [f"{k}: {v}" for k, v in headers.items()]
    if body:
        head.append("Content-Type: application/octet-stream")
        head.append(f"Content-Length: {len(body)}")
    gen = _Gen(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    loop = asyncio.get_running_loop()
    conns: list[_Conn] = []
    for _ in range(connections):
        try:
            _, proto = await loop.create_connection(lambda: _Conn(gen), host, port)
        except OSError:
            gen.errors += 1
            continue
        conns.append(proto)
    start = time.perf_counter()
    await asyncio.sleep(seconds)
    gen.stopping = True
    elapsed = time.perf_counter() - start
    lat = sorted(gen.latencies)
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    await asyncio.wait([c.lost for c in conns], timeout=5)

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")

    return LoadResult(
        len(lat), elapsed, len(lat) / elapsed, pct(0.5), pct(0.99), gen.non2xx, gen.errors
    )


def run_builtin(
    url: str,
    seconds: float,
    connections: int,
    headers: dict[str, str],
    method: str = "GET",
    body: bytes = b"",
) -> LoadResult:
    import uvloop

    return uvloop.run(_builtin(url, seconds, connections, headers, method, body))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("-c", "--connections", type=int, default=32)
    p.add_argument("-d", "--duration", type=float, default=5.0)
    p.add_argument("-H", "--header", action="append", default=[])
    p.add_argument("--post", type=int, default=0, help="POST a body of this many bytes")
    p.add_argument("--builtin", action="store_true", help="do not use wrk even if installed")
    args = p.parse_args()
    headers = dict(h.split(": ", 1) for h in args.header)
    if WRK and not args.builtin and not args.post:
        res = run_wrk(wrk_argv(args.url, args.duration, args.connections, headers), args.duration)
    else:
        method, body = ("POST", b"x" * args.post) if args.post else ("GET", b"")
        res = run_builtin(args.url, args.duration, args.connections, headers, method, body)
    json.dump(asdict(res), sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
