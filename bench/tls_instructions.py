"""Instructions per request over TLS, counted by callgrind: the gateway's plain and TLS listeners
and nginx's (the bench peer, plain and TLS), on the same stack as `make bench`.

Each target runs under `valgrind --tool=callgrind`; the client here opens its connections and
warms them (handshakes included) first, then a callgrind dump zeroes the counters, the measured
requests run, and a second dump holds exactly their cost: keep-alive requests on 8 connections,
then one new connection (one full handshake) per request. The same figure every run, however
busy the machine, unlike the req/s and CPU of `make bench`. Needs valgrind; nginx is optional
(`--no-nginx`). A few minutes on 2 cores.

    .venv/bin/python bench/tls_instructions.py [--requests 1000] [--new 200] [--no-nginx]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import ssl
import subprocess
import sys
import time
from pathlib import Path

import nginx
import yaml
from procs import Stack, free_port, wait_port
from run import Bench, gateway_config, temp_dir

PY = sys.executable
CONNECTIONS = 8


class Target:
    """One server under callgrind; `measure()` returns the instructions of what ran between."""

    def __init__(self, name: str, argv: list[str], out: Path) -> None:
        self.name = name
        self.out = out
        self.dumps = 0
        grind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        self.proc = subprocess.Popen(
            grind + argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def dump(self) -> int:
        """Dump (and zero) the counters; the instructions since the last dump."""
        subprocess.run(["callgrind_control", "-d", str(self.proc.pid)], capture_output=True)
        self.dumps += 1
        path = Path(f"{self.out}.{self.dumps}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = path.read_text() if path.exists() else ""
            m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
            if m is not None:
                return int(m.group(1))
            time.sleep(0.2)
        sys.exit(f"{self.name}: no callgrind dump {path}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


async def _answer(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"answered {head[:60]!r}")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)


async def _load(
    target: Target, port: int, tls: ssl.SSLContext | None, token: str, total: int, new: bool
) -> int:
    """Warm CONNECTIONS connections, then dump, `total` requests (on them, or each on a new
    connection with `Connection: close`), dump: the instructions of those requests."""
    head = f"GET /bench HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
    keep, close = (head + "\r\n").encode(), (head + "Connection: close\r\n\r\n").encode()
    conns = [await asyncio.open_connection("127.0.0.1", port, ssl=tls) for _ in range(CONNECTIONS)]

    async def on(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], n: int) -> None:
        for _ in range(n):
            conn[1].write(keep)
            await _answer(conn[0])

    async def fresh(n: int) -> None:
        for _ in range(n):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
            writer.write(close)
            await _answer(reader)
            writer.close()
            await writer.wait_closed()

    await asyncio.gather(*(on(c, 5) for c in conns))
    await asyncio.to_thread(target.dump)
    each = total // CONNECTIONS
    if new:
        await asyncio.gather(*(fresh(each) for _ in conns))
    else:
        await asyncio.gather(*(on(c, each) for c in conns))
    spent = await asyncio.to_thread(target.dump)
    for _, writer in conns:
        writer.close()
    return spent // (each * CONNECTIONS)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=1000, help="keep-alive requests counted")
    p.add_argument("--new", type=int, default=200, help="new TLS connections counted")
    p.add_argument("--no-nginx", action="store_true")
    a = p.parse_args()
    args = argparse.Namespace(connections=32, no_nginx=a.no_nginx, no_wrk=False, skip_tls=False)
    with temp_dir() as tmp:
        stack = Stack(tmp)
        bench = Bench(args, tmp, stack)
        assert bench.cert is not None
        client = ssl.create_default_context(cafile=bench.cert.ca_file)
        targets: list[Target] = []
        try:
            up, idp = bench.start_upstream(), bench.start_idp()
            ports: dict[str, tuple[Target, int]] = {}
            for name, cert in (("gateway", None), ("gateway_tls", bench.cert)):
                cfg = gateway_config(free_port(), up, idp, tls=cert)
                path = tmp / f"{name}.yaml"
                path.write_text(yaml.safe_dump(cfg, sort_keys=False))
                argv = [PY, "-m", "gateway", "serve", "--config", str(path)]
                targets.append(Target(name, argv, tmp / f"cg-{name}.out"))
                ports[name] = (targets[-1], cfg["listen"]["port"])
            if nginx.NGINX is not None and not a.no_nginx:
                port, auth, tls_port = free_port(), free_port(), free_port()
                tls = (tls_port, bench.cert.cert_file, bench.cert.key_file)
                conf = nginx.peer_conf(tmp / "nginx-peer", port, auth, up, bench.token, tls)
                argv = [*nginx.argv(conf), "-g", "master_process off;"]
                targets.append(Target("nginx", argv, tmp / "cg-nginx.out"))
                ports["nginx"], ports["nginx_tls"] = (targets[-1], port), (targets[-1], tls_port)
                wait_port(auth, timeout=300)
            for _, port in ports.values():
                wait_port(port, timeout=300)
            rows = [
                ("gateway", "gateway plain, keep-alive", False),
                ("gateway_tls", "gateway TLS, keep-alive", False),
                ("gateway_tls", "gateway TLS, new connection per request", True),
                ("nginx", "nginx plain, keep-alive", False),
                ("nginx_tls", "nginx TLS, keep-alive", False),
                ("nginx_tls", "nginx TLS, new connection per request", True),
            ]
            for key, label, new in rows:
                if key not in ports:
                    continue
                target, port = ports[key]
                ctx = client if key.endswith("_tls") else None
                total = a.new if new else a.requests
                spent = asyncio.run(_load(target, port, ctx, bench.token, total, new))
                print(f"{label:42s} {spent:>12,} instructions per request", flush=True)
        finally:
            for target in targets:
                target.stop()
            stack.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
