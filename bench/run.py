"""`make bench`: the gateway against nginx (`auth_request` + `proxy_cache`) and a bare aiohttp
proxy, measured in one run on this machine.

Starts by itself, on 127.0.0.1 only, every process in its own process group and stopped at the
end (try/finally, by process group id), every file in one temp dir that is removed:

- the upstream: nginx answering `{"ok":true}` with keep-alive (bench/upstream.py without nginx);
- a tiny RFC 7662 IdP (bench/idp.py) that the gateway asks once per process for the bench token;
- the gateway (`gateway serve`), a cached-token route (grants + scopes, so the whole pipeline
  runs) and a public route, JSON access log ON to a file; a second gateway with 100 routes
  whose matched one is last; a third with `tracing:` (`sample_ratio: 0.01`) exporting to a
  minimal OTLP/HTTP collector (bench/otlp_sink.py);
- the reference: a bare aiohttp reverse proxy (bench/bare_proxy.py);
- the peer, when nginx is installed: nginx, 1 worker, `auth_request` with a cached subrequest,
  buffered access log (bench/nginx.py);
- TLS (with wrk): a third gateway with a TLS listener, and the same nginx peer serving HTTPS on a
  second port, with one certificate (bench/certs.py, EC P-256) for both: keep-alive requests,
  and new connections (`Connection: close`: one full handshake per request).

The target under test runs on core 1 (`taskset -c 1`), the load generator (wrk -t1 -c32, else
bench/loadgen.py), the upstream and the IdP on core 0. Runs are interleaved (gateway, bare,
nginx, ..., gateway, bare, nginx, ...) and the table shows medians. CPU µs per request is the
target's utime+stime (/proc/<pid>/stat, all its processes) over the run divided by requests.
Then the bound-token rows (bench/bound.py: an audience-checked route and DPoP routes with ES256,
RS256 and EdDSA proofs against the same token route with a bearer token), `workers: auto`
against 1 worker, both unpinned, and RSS per 100k cached tokens.

    .venv/bin/python bench/run.py [--duration 3] [--repeats 5] [--quick] [--workers auto|1]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import bound
import certs
import loadgen
import nginx
import yaml
from procs import HOST, Proc, Stack, cores, cpu_seconds, free_port, pin, wait_port

HERE = Path(__file__).resolve().parent
PY = sys.executable
TRACED_RATIO = 0.01  # the traced gateway's `tracing.sample_ratio`
POST_BYTES = 1024
PEER = "nginx auth_request+proxy_cache"


# -- configs --------------------------------------------------------------------------------


def gateway_config(
    port: int,
    upstream_port: int,
    idp_port: int,
    *,
    extra_routes: int = 0,
    workers: Any = 1,
    tls: certs.ServerCert | None = None,
    redis_url: str | None = None,
    tracing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The gateway's config: `/bench` (token, grant and scope checked), `/limited` (the same
    with a rate limit keyed by client_id, never reached) and `/public`; with `extra_routes`,
    that many filler routes come first and `/bench` is the last route; with `tls`, the listener
    serves HTTPS with that certificate. `redis_url`: the token store and the rate limit's
    buckets in that Redis. `tracing`: that `tracing:` block (and an admin port of its own, to
    read its metrics)."""
    fillers: list[dict[str, Any]] = []
    for i in range(extra_routes):
        kind = i % 5
        name = f"filler{i}"
        if kind in (0, 1):
            fillers.append({"name": name, "path": f"/svc{i}/status", "upstream": "up"})
        elif kind in (2, 3):
            fillers.append(
                {"name": name, "path_prefix": f"/api{i}/v1", "upstream": "up", "scopes": ["x"]}
            )
        else:
            fillers.append(
                {
                    "name": name,
                    "path_regex": f"^/items{i}/[0-9]+$",
                    "upstream": "up",
                    "methods": ["GET", "POST"],
                }
            )
    listen: dict[str, Any] = {"host": HOST, "port": port}
    if tls is not None:
        listen["tls"] = {"cert_file": tls.cert_file, "key_file": tls.key_file}
    cfg: dict[str, Any] = {
        "listen": listen,
        "admin": {"host": HOST, "port": 0},
        "workers": workers,
        "log": {"level": "info", "format": "json", "access": True},
        "tokens": {
            "sources": [
                {"type": "store"},
                {
                    "type": "introspection",
                    "url": f"http://{HOST}:{idp_port}/introspect",
                    "client_id": "gateway",
                    "client_secret": "bench-secret",
                },
            ],
            "cache": {"ttl": "5m"},
        },
        "upstreams": {"up": {"url": f"http://{HOST}:{upstream_port}"}},
        "routes": [
            *fillers,
            {
                "name": "bench",
                "path": "/bench",
                "upstream": "up",
                "grants": ["authorization_code"],
                "scopes": ["bench"],
            },
        ],
    }
    if not extra_routes:  # with fillers, the measured route is the last of exactly 1 + fillers
        cfg["routes"].append(
            {"name": "public", "path": "/public", "upstream": "up", "auth": "public"}
        )
        limited = {**cfg["routes"][-2], "name": "limited", "path": "/limited"}
        cfg["routes"].append({**limited, "rate_limit": "bench"})
        cfg["rate_limits"] = {"bench": {"key": ["client_id"], "rate": "1000000/s"}}
    if redis_url is not None:
        cfg["redis"] = {"url": redis_url, "key_prefix": "bench:"}
    if tracing is not None:
        cfg["tracing"] = tracing
        cfg["admin"] = {"host": HOST, "port": free_port()}
    return cfg


# -- measuring ------------------------------------------------------------------------------


@dataclass
class Sample:
    rps: float
    p50: float
    p99: float
    cpu_us: float
    non2xx: int
    errors: int


@dataclass
class Workload:
    """One row of the table: a target process, a URL, GET or POST."""

    key: str
    label: str
    proc: Proc
    url: str
    post: bool = False
    token: bool = True
    role: str = "gateway"  # gateway | bare | peer
    close: bool = False  # `Connection: close`: a new connection (a TLS handshake) per request
    vs: str | None = None  # the peer row a gateway row is compared with (default: peer/peer_post)
    log_files: list[Path] = field(default_factory=list)
    auth: str | None = None  # the Authorization value, when not the bench bearer token
    script: Path | None = None  # a wrk script of its own (DPoP proofs)
    samples: list[Sample] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in self.samples)


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, stack: Stack) -> None:
        self.args = args
        self.tmp = tmp
        self.stack = stack
        self.token = secrets.token_urlsafe(32)
        self.two_cores = cores() >= 2
        self.use_nginx = nginx.NGINX is not None and not args.no_nginx
        self.use_wrk = loadgen.WRK is not None and not args.no_wrk
        self.use_tls = self.use_wrk and not args.skip_tls  # the built-in generator is HTTP only
        self.cert = certs.make(tmp / "tls") if self.use_tls else None
        self.post_script = loadgen.post_script(tmp / "post.lua", POST_BYTES)
        self._out: list[IO[bytes]] = []
        self.access_logs: dict[str, Path] = {}
        self.sink = 0  # the OTLP collector's port
        self.traced_admin = 0  # the traced gateway's admin port

    def core(self, n: int) -> int | None:
        return n if self.two_cores else None

    # ------------------------------------------------------------------ processes
    def start_upstream(self) -> int:
        port = free_port()
        if self.use_nginx:
            conf = nginx.upstream_conf(self.tmp / "nginx-upstream", port)
            proc = self.stack.start("upstream", pin(self.core(0)) + nginx.argv(conf))
        else:
            argv = [PY, str(HERE / "upstream.py"), "--port", str(port)]
            proc = self.stack.start("upstream", pin(self.core(0)) + argv)
        wait_port(port, proc=proc)
        return port

    def start_idp(self, extra: tuple[str, ...] = ()) -> int:
        port = free_port()
        # `--opt=value`: a random token may begin with `-`, which argparse would read as an option
        argv = [PY, str(HERE / "idp.py"), f"--port={port}", f"--token={self.token}", *extra]
        proc = self.stack.start("idp", pin(self.core(0)) + argv)
        wait_port(port, proc=proc)
        return port

    def start_gateway(self, name: str, cfg: dict[str, Any], core: int | None) -> tuple[Proc, int]:
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        access = self.tmp / f"{name}.access.log"
        out = access.open("ab")  # O_APPEND: safe to truncate between runs
        self._out.append(out)
        argv = [PY, "-m", "gateway", "serve", "--config", str(path)]
        proc = self.stack.start(name, pin(core) + argv, stdout=out)
        port = cfg["listen"]["port"]
        wait_port(port, proc=proc)
        self.access_logs[name] = access
        return proc, port

    def start_redis(self) -> int | None:
        """A redis-server for the `gateway + Redis` rows (None when not installed)."""
        binary = shutil.which("redis-server")
        if binary is None:
            print("redis-server not found: the `gateway + Redis` rows are skipped")
            return None
        port = free_port()
        argv = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        proc = self.stack.start("redis", pin(self.core(0)) + argv)
        wait_port(port, proc=proc)
        return port

    def start_sink(self) -> int:
        """The OTLP/HTTP collector the traced gateway exports to (bench/otlp_sink.py)."""
        port = free_port()
        argv = [PY, str(HERE / "otlp_sink.py"), "--port", str(port)]
        proc = self.stack.start("otlp", pin(self.core(0)) + argv)
        wait_port(port, proc=proc)
        return port

    def start_bare(self, upstream_port: int) -> tuple[Proc, int]:
        port = free_port()
        argv = [PY, str(HERE / "bare_proxy.py"), "--port", str(port)]
        argv += ["--upstream", f"http://{HOST}:{upstream_port}"]
        proc = self.stack.start("bare", pin(self.core(1)) + argv)
        wait_port(port, proc=proc)
        return proc, port

    def start_peer(self, upstream_port: int) -> tuple[Proc, int, int | None]:
        """nginx: the plain port, and the TLS port (None without TLS rows)."""
        port, auth_port = free_port(), free_port()
        root = self.tmp / "nginx-peer"
        tls_port = free_port() if self.cert is not None else None
        tls = (
            (tls_port, self.cert.cert_file, self.cert.key_file) if self.cert and tls_port else None
        )
        conf = nginx.peer_conf(root, port, auth_port, upstream_port, self.token, tls)
        proc = self.stack.start("peer", pin(self.core(1)) + nginx.argv(conf))
        wait_port(port, proc=proc)
        wait_port(auth_port, proc=proc)
        if tls_port is not None:
            wait_port(tls_port, proc=proc)
        return proc, port, tls_port

    # ------------------------------------------------------------------ checks
    def get(self, url: str, token: str | None) -> tuple[int, bytes]:
        port = int(url.split(":")[2].split("/")[0])
        path = "/" + url.split("/", 3)[3]
        conn: http.client.HTTPConnection
        if url.startswith("https:"):
            assert self.cert is not None
            ctx = ssl.create_default_context(cafile=self.cert.ca_file)
            conn = http.client.HTTPSConnection(HOST, port, timeout=10, context=ctx)
        else:
            conn = http.client.HTTPConnection(HOST, port, timeout=10)
        try:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def check(self, w: Workload) -> None:
        """Fail loudly unless the target answers 200 `{"ok":true}` with the bench token (and,
        where a token is required, 401 without it or with another one)."""
        status, body = self.get(w.url, self.token)
        if status != 200 or json.loads(body) != {"ok": True}:
            raise RuntimeError(f"{w.label}: {w.url} answered {status} {body[:200]!r}, not 200")
        if w.role != "bare" and w.token:
            for bad in (None, "not-the-bench-token"):
                status, _ = self.get(w.url, bad)
                if status != 401:
                    raise RuntimeError(f"{w.label}: token {bad!r} answered {status}, not 401")

    # ------------------------------------------------------------------ load
    def load(self, w: Workload, seconds: float, core: int | None) -> loadgen.LoadResult:
        auth = w.auth or f"Bearer {self.token}"
        headers = {"Authorization": auth} if w.token else {}
        if w.close:
            headers["Connection"] = "close"
        conns = self.args.connections
        if self.use_wrk:
            script = w.script or (self.post_script if w.post else None)
            argv = loadgen.wrk_argv(w.url, seconds, conns, headers, script)
            return loadgen.run_wrk(pin(core) + argv, seconds)
        argv = [PY, str(HERE / "loadgen.py"), "--builtin", "--url", w.url]
        argv += ["-c", str(conns), "-d", str(seconds)]
        argv += [x for k, v in headers.items() for x in ("-H", f"{k}: {v}")]
        if w.post:
            argv += ["--post", str(POST_BYTES)]
        done = subprocess.run(
            pin(core) + argv, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"loadgen failed: {done.stderr[-2000:]}")
        return loadgen.LoadResult(**json.loads(done.stdout))

    def measure(self, w: Workload, seconds: float, core: int | None) -> Sample:
        for path in w.log_files:
            with contextlib.suppress(OSError):
                os.truncate(path, 0)  # keep the temp dir small; writers append
        cpu0 = w.proc.cpu_seconds()
        res = self.load(w, seconds, core)
        cpu1 = w.proc.cpu_seconds()
        if w.proc.popen.poll() is not None:
            raise RuntimeError(f"{w.label} died: {w.proc.tail()}")
        if res.requests == 0:
            raise RuntimeError(f"{w.label}: no request completed")
        cpu_us = (cpu1 - cpu0) * 1e6 / res.requests
        return Sample(res.rps, res.p50_ms, res.p99_ms, cpu_us, res.non2xx, res.errors)

    # ------------------------------------------------------------------ the run
    def run(self) -> None:
        a = self.args
        t0 = time.monotonic()
        print(self.header())
        up = self.start_upstream()
        idp = self.start_idp()
        gw, gw_port = self.start_gateway(
            "gateway", gateway_config(free_port(), up, idp), self.core(1)
        )
        gw100, gw100_port = self.start_gateway(
            "gateway100", gateway_config(free_port(), up, idp, extra_routes=99), self.core(1)
        )
        gw_tls = gw_tls_port = None
        if self.cert is not None:
            gw_tls, gw_tls_port = self.start_gateway(
                "gateway_tls", gateway_config(free_port(), up, idp, tls=self.cert), self.core(1)
            )
        gwr = gwr_port = None
        redis_port = self.start_redis()
        if redis_port is not None:
            gwr, gwr_port = self.start_gateway(
                "gateway_redis",
                gateway_config(free_port(), up, idp, redis_url=f"redis://{HOST}:{redis_port}/0"),
                self.core(1),
            )
        sink = self.start_sink()
        traced_cfg = gateway_config(
            free_port(), up, idp, tracing={
                "otlp_endpoint": f"http://{HOST}:{sink}", "service_name": "bench",
                "sample_ratio": TRACED_RATIO,
            },
        )  # fmt: skip
        traced, traced_port = self.start_gateway("gateway_traced", traced_cfg, self.core(1))
        self.traced_admin = traced_cfg["admin"]["port"]
        self.sink = sink
        bare, bare_port = self.start_bare(up)
        peer = peer_port = peer_tls_port = None
        if self.use_nginx:
            peer, peer_port, peer_tls_port = self.start_peer(up)

        def url(port: int, path: str) -> str:
            return f"http://{HOST}:{port}{path}"

        gw_logs = [self.access_logs["gateway"]]
        rows = [
            Workload("gw", "gateway, token route", gw, url(gw_port, "/bench"), log_files=gw_logs),
            Workload(
                "gw_traced",
                f"gateway, token route, tracing {TRACED_RATIO:.0%}",
                traced,
                url(traced_port, "/bench"),
                log_files=[self.access_logs["gateway_traced"]],
            ),
            Workload(
                "bare",
                "bare aiohttp proxy (no auth)",
                bare,
                url(bare_port, "/bench"),
                token=False,
                role="bare",
            ),
        ]
        if peer is not None and peer_port is not None:
            peer_logs = [self.tmp / "nginx-peer" / "access.log"]
            rows.append(
                Workload(
                    "peer", PEER, peer, url(peer_port, "/bench"), role="peer", log_files=peer_logs
                )
            )
        rows += [
            Workload(
                "gw_public",
                "gateway, auth: public route",
                gw,
                url(gw_port, "/public"),
                token=False,
                log_files=gw_logs,
            ),
            Workload(
                "gw100",
                "gateway, 100 routes (match last)",
                gw100,
                url(gw100_port, "/bench"),
                log_files=[self.access_logs["gateway100"]],
            ),
            Workload(
                "gw_post",
                "gateway, token route",
                gw,
                url(gw_port, "/bench"),
                post=True,
                log_files=gw_logs,
            ),
        ]
        rows.append(
            Workload(
                "gw_limited",
                "gateway, rate-limited token route",
                gw,
                url(gw_port, "/limited"),
                log_files=gw_logs,
            )
        )
        if gwr is not None and gwr_port is not None:
            gwr_logs = [self.access_logs["gateway_redis"]]
            rows += [
                Workload(
                    "gwr",
                    "gateway + Redis, token route",
                    gwr,
                    url(gwr_port, "/bench"),
                    log_files=gwr_logs,
                ),
                Workload(
                    "gwr_limited",
                    "gateway + Redis, rate-limited route",
                    gwr,
                    url(gwr_port, "/limited"),
                    log_files=gwr_logs,
                ),
            ]
        if peer is not None and peer_port is not None:
            rows.append(
                Workload(
                    "peer_post",
                    PEER,
                    peer,
                    url(peer_port, "/bench"),
                    post=True,
                    role="peer",
                    log_files=peer_logs,
                )
            )
        rows += self.tls_rows(gw_tls, gw_tls_port, peer, peer_tls_port)
        for w in rows:
            self.check(w)
        warm = 1.0
        for w in rows:  # connection pools filled, token cached, first-run effects gone
            self.measure(w, warm, self.core(0))
        self.check_access_log(self.access_logs["gateway"])
        for r in range(a.repeats):
            for w in rows:
                w.samples.append(self.measure(w, a.duration, self.core(0)))
            print(f"  repeat {r + 1}/{a.repeats} done ({time.monotonic() - t0:.0f}s)", flush=True)
        self.print_table(rows)
        self.print_checks(rows, idp)
        if not a.skip_bound and self.use_wrk:
            self.run_bound(up)
        if a.workers == "auto":
            self.run_workers(up, idp)
        if not a.skip_rss:
            self.run_rss()
        load = Path("/proc/loadavg").read_text().split()[0]
        print(f"\nwhole run: {time.monotonic() - t0:.0f}s; load average at the end {load}")

    def tls_rows(
        self,
        gw: Proc | None,
        gw_port: int | None,
        peer: Proc | None,
        peer_port: int | None,
    ) -> list[Workload]:
        """The gateway with a TLS listener and nginx over TLS: keep-alive, then one new
        connection (one full handshake) per request."""
        if gw is None or gw_port is None:
            return []
        url = f"https://{HOST}:{gw_port}/bench"
        logs = [self.access_logs["gateway_tls"]]
        rows = [
            Workload("gw_tls", "gateway TLS, token route", gw, url, log_files=logs, vs="peer_tls"),
            Workload(
                "gw_tls_new",
                "gateway TLS, new conn per request",
                gw,
                url,
                log_files=logs,
                close=True,
                vs="peer_tls_new",
            ),
        ]
        if peer is not None and peer_port is not None:
            purl = f"https://{HOST}:{peer_port}/bench"
            plogs = [self.tmp / "nginx-peer" / "access.log"]
            rows.insert(
                1, Workload("peer_tls", f"{PEER} TLS", peer, purl, role="peer", log_files=plogs)
            )
            rows.append(
                Workload(
                    "peer_tls_new",
                    "nginx TLS, new conn per request",
                    peer,
                    purl,
                    role="peer",
                    log_files=plogs,
                    close=True,
                )
            )
        return rows

    def run_bound(self, up: int) -> None:
        """Audience and DPoP against the same token route with a bearer token, one gateway
        (bench/bound.py); interleaved, medians. Every DPoP request carries a proof never sent
        before (a replay would be refused), made ahead of each run for that run."""
        a = self.args
        makers = {alg: bound.ProofMaker(alg) for alg in bound.ALGS}
        tokens = bound.bound_tokens()
        idp = self.start_idp(
            tuple(f"--bound={tokens[alg]}={makers[alg].thumbprint}" for alg in bound.ALGS)
        )
        cfg = bound.bound_config(gateway_config(free_port(), up, idp))
        proc, port = self.start_gateway("gw_bound", cfg, self.core(1))
        logs = [self.access_logs["gw_bound"]]
        base = f"http://{HOST}:{port}"
        rows = [
            Workload("b_bearer", "token route, bearer", proc, f"{base}/bench", log_files=logs),
            Workload("b_aud", "same + resource (audience)", proc, f"{base}/aud", log_files=logs),
        ]
        dpop = {
            alg: Workload(
                f"b_{alg}", f"same + DPoP, {alg} proofs", proc, f"{base}/dpop-{alg.lower()}",
                log_files=logs, auth=f"DPoP {tokens[alg]}",
            )
            for alg in bound.ALGS
        }  # fmt: skip
        rows += dpop.values()
        for w in rows[:2]:
            self.check(w)
            self.measure(w, 1.0, self.core(0))
        # size the proof pools: a warm-up second per algorithm with a pool for the bearer rate
        per_second = int(rows[0].median("rps") * 1.5) if rows[0].samples else 20000
        rates = {}
        for alg, w in dpop.items():
            w.script = self._proofs(makers[alg], w, tokens[alg], per_second, "warm")
            sample = self.measure(w, 1.0, self.core(0))
            if sample.non2xx:
                raise RuntimeError(f"{w.label}: {sample.non2xx} non-2xx answers in the warm-up")
            rates[alg] = sample.rps
        for w in rows:
            w.samples.clear()
        print(f"\nbound tokens: proofs made ahead ({', '.join(bound.ALGS)})", flush=True)
        for r in range(a.repeats):
            for alg, w in dpop.items():
                count = int(rates[alg] * (a.duration + 1) * 1.4) + 1000
                w.script = self._proofs(makers[alg], w, tokens[alg], count, str(r))
            for w in rows:
                w.samples.append(self.measure(w, a.duration, self.core(0)))
        print(
            f"bound tokens, one gateway, medians of {a.repeats} interleaved runs (no Redis: the "
            "DPoP jti is recorded in process)"
        )
        self.print_rows(rows, ref=None)
        print("  CPU per DPoP proof check, in this process (bench/bound.py):")
        print("\n".join(bound.verify_costs()))
        ref = rows[0]
        for w in rows[1:]:
            print(
                "  "
                + self.compare(f"{w.label} / bearer", w, ref, 0.05 if w.key == "b_aud" else 1.0)
            )

    def _proofs(self, maker: bound.ProofMaker, w: Workload, token: str, n: int, tag: str) -> Path:
        proofs = bound.make_proofs(maker, w.url, token, n, self.tmp / f"proofs-{maker.alg}-{tag}")
        return bound.wrk_script(proofs, self.tmp / f"dpop-{maker.alg}-{tag}.lua")

    def run_workers(self, up: int, idp: int) -> None:
        """`workers: auto` (one process per core, SO_REUSEPORT) against 1 worker, unpinned."""
        a = self.args
        n = os.cpu_count() or 1
        one, one_port = self.start_gateway("gw_w1", gateway_config(free_port(), up, idp), None)
        auto, auto_port = self.start_gateway(
            "gw_wauto", gateway_config(free_port(), up, idp, workers="auto"), None
        )
        rows = [
            Workload(
                "w1",
                "gateway, workers: 1",
                one,
                f"http://{HOST}:{one_port}/bench",
                log_files=[self.access_logs["gw_w1"]],
            ),
            Workload(
                "wauto",
                f"gateway, workers: auto ({n})",
                auto,
                f"http://{HOST}:{auto_port}/bench",
                log_files=[self.access_logs["gw_wauto"]],
            ),
        ]
        for w in rows:
            want = n + 1 if w.key == "wauto" else 1  # the parent and one process per core
            wait_until(lambda w=w, want=want: len(w.proc.pids()) >= want, 15)
            self.check(w)
            self.measure(w, 1.0, None)  # every worker asks the IdP once, pools fill
        cpu0 = {pid: cpu_seconds(pid) for pid in auto.pids()}
        for _ in range(a.repeats):
            for w in rows:
                w.samples.append(self.measure(w, a.duration, None))
        used = {pid: cpu_seconds(pid) - t for pid, t in cpu0.items()}
        split = " / ".join(f"{t / (sum(used.values()) or 1) * 100:.0f}%" for t in used.values())
        print(
            f"\nworkers: auto on {n} cores, everything unpinned (wrk, the upstream and the IdP "
            f"share the same cores), medians of {a.repeats} interleaved runs"
        )
        self.print_rows(rows, ref=None)
        ratio = rows[1].median("rps") / rows[0].median("rps")
        print(
            f"  workers: auto / workers: 1 = {ratio:.2f}x req/s; CPU split over the "
            f"{len(used)} processes (parent first): {split}"
        )
        self.stack.procs.remove(auto)
        self.stack.procs.remove(one)
        auto.stop()
        one.stop()

    def run_rss(self) -> None:
        print()
        done = subprocess.run(
            [PY, str(HERE / "rss_tokens.py")],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        print((done.stdout + done.stderr).strip())

    def check_access_log(self, path: Path) -> None:
        """The gateway's JSON access log is on: the warm-up left access lines in the file."""
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, IndexError):
                first = path.read_bytes().split(b"\n", 1)[0]
                if json.loads(first).get("event") == "access":
                    return
            time.sleep(0.1)
        raise RuntimeError(f"no JSON access-log line in {path}")

    # ------------------------------------------------------------------ output
    def header(self) -> str:
        a = self.args
        lg = "wrk -t1" if self.use_wrk else "bench/loadgen.py"
        up = "nginx" if self.use_nginx else "bench/upstream.py"
        pinning = (
            "target on core 1, load generator + upstream + IdP on core 0"
            if self.two_cores
            else "one core: nothing pinned"
        )
        load = Path("/proc/loadavg").read_text().split()[0]
        return (
            f"bench: {lg} -c{a.connections}, {a.duration:g}s x {a.repeats} interleaved repeats, "
            f"upstream {up}; {pinning}; load average before start {load}"
        )

    def print_rows(self, rows: list[Workload], ref: dict[str, Workload] | None) -> None:
        head = (
            f"  {'workload':<10} {'target':<34} {'req/s':>8} {'best':>7} {'spread':>7} "
            f"{'p50 ms':>7} {'p99 ms':>7} {'CPU µs/req':>10} {'non-2xx':>7} {'sock err':>8}"
        )
        if ref is not None:
            head += f" {'gw/nginx':>8} {'gw/bare':>8}"
        print(head)
        for w in rows:
            rps = [s.rps for s in w.samples]
            spread = (max(rps) - min(rps)) / w.median("rps") * 100 if rps else 0.0
            kind = "POST 1KiB" if w.post else "GET close" if w.close else "GET"
            line = (
                f"  {kind:<10} {w.label:<34} {w.median('rps'):>8.0f} {max(rps):>7.0f} "
                f"{spread:>6.0f}% {w.median('p50'):>7.2f} {w.median('p99'):>7.2f} "
                f"{w.median('cpu_us'):>10.1f} "
                f"{sum(s.non2xx for s in w.samples):>7} {sum(s.errors for s in w.samples):>8}"
            )
            if ref is not None and w.role == "gateway":
                peer = ref.get(w.vs or ("peer_post" if w.post else "peer"))
                bare = ref.get("bare") if not w.post and w.vs is None else None
                line += f" {_ratio(w, peer):>8} {_ratio(w, bare):>8}"
            print(line)

    def print_table(self, rows: list[Workload]) -> None:
        ref = {w.key: w for w in rows}
        print(
            f"\nmedians of {self.args.repeats} runs; best = highest req/s of the runs; "
            "spread = (max-min)/median of req/s;\n"
            "gw/nginx and gw/bare = req/s ratio (CPU µs/req ratio in the summary)"
        )
        self.print_rows(rows, ref)

    def print_checks(self, rows: list[Workload], idp: int) -> None:
        ref = {w.key: w for w in rows}
        gw = ref["gw"]
        print()
        for key, name in (("peer", "nginx peer"), ("bare", "bare aiohttp")):
            if key in ref:
                o = ref[key]
                print(
                    f"  gateway / {name}: req/s {gw.median('rps') / o.median('rps'):.2f}x, "
                    f"CPU per request {gw.median('cpu_us') / o.median('cpu_us'):.2f}x; "
                    f"{_paired(gw, o)}"
                )
        if "peer_post" in ref:
            g, o = ref["gw_post"], ref["peer_post"]
            print(
                f"  POST 1KiB gateway / nginx peer: req/s {g.median('rps') / o.median('rps'):.2f}x,"
                f" CPU per request {g.median('cpu_us') / o.median('cpu_us'):.2f}x; "
                f"{_paired(g, o)}"
            )
        for key, what, unit in (
            ("tls", "TLS keep-alive gateway / nginx", "request"),
            ("tls_new", "new TLS connections gateway / nginx", "connection"),
        ):
            g, o = ref.get(f"gw_{key}"), ref.get(f"peer_{key}")
            if g is not None and o is not None:
                print(
                    f"  {what}: req/s {g.median('rps') / o.median('rps'):.2f}x "
                    f"({g.median('rps'):.0f} vs {o.median('rps'):.0f}; spread {_spread(g):.0f}% / "
                    f"{_spread(o):.0f}%), CPU per {unit} {g.median('cpu_us'):.0f} vs "
                    f"{o.median('cpu_us'):.0f} µs "
                    f"({g.median('cpu_us') / o.median('cpu_us'):.2f}x); {_paired(g, o)}"
                )
        if "gw_tls" in ref:
            rps = ref["gw_tls"].median("rps") / gw.median("rps")
            cpu = ref["gw_tls"].median("cpu_us") / gw.median("cpu_us")
            print(
                f"  TLS / plain gateway, keep-alive: req/s {rps:.2f}x, CPU per request {cpu:.2f}x"
            )
        print("  " + self.compare("100 routes / 1 route", ref["gw100"], gw, 0.05))
        print("  " + self.compare("token route / public route", gw, ref["gw_public"], 0.10))
        print(
            "  " + self.compare("rate-limited / same route, no Redis", ref["gw_limited"], gw, 0.15)
        )
        if "gwr_limited" in ref:
            print(
                "  "
                + self.compare(
                    "rate-limited / same route, Redis", ref["gwr_limited"], ref["gwr"], 0.15
                )
            )
        print(
            "  "
            + self.compare(f"tracing {TRACED_RATIO:.0%} / no tracing", ref["gw_traced"], gw, 0.05)
        )
        print("  " + self.tracing_counts(ref["gw_traced"]))
        status, body = self.get(f"http://{HOST}:{idp}/count", None)
        idp_calls = json.loads(body).get("introspect") if status == 200 else "?"
        auth_log = self.tmp / "nginx-peer" / "auth.log"
        nginx_auth = len(auth_log.read_bytes().splitlines()) if auth_log.exists() else None
        extra = f"; nginx auth endpoint hits: {nginx_auth}" if nginx_auth is not None else ""
        print(f"  IdP introspections (token cache misses, all gateways): {idp_calls}{extra}")

    def tracing_counts(self, w: Workload) -> str:
        """What the traced gateway's collector received, against the requests it served."""
        _, body = self.get(f"http://{HOST}:{self.sink}/count", None)
        got = json.loads(body)
        _, metrics = self.get(f"http://{HOST}:{self.traced_admin}/metrics", None)
        dropped = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.decode().splitlines()
            if line.startswith("gateway_spans_dropped_total{")
        )
        served = sum(s.rps for s in w.samples) * self.args.duration
        return (
            f"traced gateway: {got['spans']} spans in {got['exports']} exports for about "
            f"{served:,.0f} measured requests (and the warm-up); {dropped:.0f} spans dropped"
        )

    def compare(self, what: str, a: Workload, b: Workload, target: float) -> str:
        """`a` against `b` in req/s and in CPU per request (the steadier figure on a shared
        machine), each judged against `target` widened to the run-to-run spread."""
        rps = a.median("rps") / b.median("rps")
        cpu = b.median("cpu_us") / a.median("cpu_us")  # > 1: `a` is cheaper
        line = f"{what}: req/s {rps:.2f}x, CPU per request {1 / cpu:.2f}x; {_paired(a, b)}"
        if self.args.repeats < 3:
            return line + " (too few repeats to judge)"
        verdicts = []
        for name, ratio, attr in (("req/s", rps, "rps"), ("CPU", cpu, "cpu_us")):
            noise = max(_spread(a, attr), _spread(b, attr)) / 100
            ok = ratio >= 1 - max(target, noise)
            verdicts.append(
                f"{name} {'within' if ok else 'BEYOND'} {max(target, noise) * 100:.0f}%"
                f"{' (spread)' if noise > target else ''}"
            )
        return f"{line} [{', '.join(verdicts)}]"


def _ratio(w: Workload, other: Workload | None) -> str:
    if other is None or not other.samples:
        return ""
    return f"{w.median('rps') / other.median('rps'):.2f}x"


def _paired(a: Workload, b: Workload) -> str:
    """The ratios of runs made next to each other (rows are interleaved, so a pair shares the
    machine's load of that moment): their median and range, req/s and CPU per request. Steadier
    than the ratio of two medians when the machine's load drifts between repeats."""
    pairs = list(zip(a.samples, b.samples, strict=False))
    if not pairs:
        return "no paired runs"
    rps = sorted(x.rps / y.rps for x, y in pairs)
    cpu = sorted(x.cpu_us / y.cpu_us for x, y in pairs if y.cpu_us > 0)
    text = f"paired runs: req/s {statistics.median(rps):.2f}x ({rps[0]:.2f}-{rps[-1]:.2f})"
    if cpu:
        text += f", CPU {statistics.median(cpu):.2f}x ({cpu[0]:.2f}-{cpu[-1]:.2f})"
    return text


def _spread(w: Workload, attr: str = "rps") -> float:
    """(max - min) / median of one figure across the repeats, in %."""
    xs = [getattr(s, attr) for s in w.samples]
    return (max(xs) - min(xs)) / statistics.median(xs) * 100


def wait_until(cond: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for worker processes")
        time.sleep(0.1)


@contextlib.contextmanager
def temp_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=3.0, help="seconds per measured run")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats (medians)")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--quick", action="store_true", help="~30s smoke run: 2s x 1, no RSS")
    p.add_argument(
        "--workers",
        choices=["auto", "1"],
        default="auto",
        help="auto (default): also measure `workers: auto` against 1 worker; 1: skip that",
    )
    p.add_argument("--no-nginx", action="store_true", help="built-in upstream, no nginx peer")
    p.add_argument("--no-wrk", action="store_true", help="built-in load generator")
    p.add_argument("--skip-rss", action="store_true", help="skip bench/rss_tokens.py")
    p.add_argument("--skip-tls", action="store_true", help="no TLS rows (they need wrk)")
    p.add_argument(
        "--skip-bound", action="store_true", help="skip the audience and DPoP rows (bench/bound.py)"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.repeats, args.skip_rss = 2.0, 1, True
    if args.duration <= 0 or args.repeats < 1:
        p.error("--duration must be > 0 and --repeats >= 1")
    return args


def main() -> int:
    args = parse_args()

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # runs the finally blocks below

    signal.signal(signal.SIGTERM, stop)
    with temp_dir() as tmp:
        stack = Stack(tmp)
        bench = Bench(args, tmp, stack)
        try:
            bench.run()
        except RuntimeError as exc:
            print(f"\nbench FAILED: {exc}", file=sys.stderr)
            for proc in stack.procs:
                if proc.popen.poll() is not None:
                    print(
                        f"--- {proc.name} (exited {proc.popen.returncode}):\n{proc.tail()}",
                        file=sys.stderr,
                    )
            return 1
        finally:
            stack.close()
            for f in bench._out:
                f.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
