"""Profile the gateway under load with py-spy and print where its time goes.

Starts the same stack as bench/run.py (upstream, IdP, the gateway with the cached-token route
and JSON access log on, pinned to core 1), puts it under wrk load (core 0) on the token route,
samples it with `py-spy record --format raw` for `--duration` seconds, and prints the top
functions by own samples (the leaf frame: time spent in the function's own code, including
the C calls it makes) and by inclusive samples. Idle time is not sampled. `--native` adds
C frames (uvloop, httptools, CPython) to the stacks. `--tls` profiles a gateway with a TLS
listener, `--close` a new connection per request (`Connection: close`).

py-spy is not a project dependency: `.venv/bin/pip install py-spy`. Run as root (or with
ptrace allowed).

    .venv/bin/python bench/profile.py [--duration 10] [--top 10] [--native] [--path /public]
        [--tls] [--close]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import loadgen
from procs import Stack, free_port, pin
from run import Bench, Workload, gateway_config, temp_dir

HERE = Path(__file__).resolve().parent
_ENTRY = ("<frozen runpy>", "gateway/__main__.py", "gateway/cli.py", "asyncio/runners.py")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        sys.exit("py-spy not found: .venv/bin/pip install py-spy")
    return found


def short_path(path: str) -> str:
    """A repo-relative path for the gateway, `pkg/mod.py` for libraries, else as given."""
    for marker in ("/site-packages/", "/lib/python3."):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker.startswith("/lib/") else tail
    repo = str(HERE.parent) + "/"
    return path.removeprefix(repo)


def function_of(frame: str) -> str:
    """`handle (/repo/gateway/pipeline.py:55)` -> `gateway/pipeline.py:handle` (no line)."""
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    return f"{short_path(m.group('file'))}:{m.group('func')}"


def parse_raw(text: str) -> tuple[Counter[str], Counter[str], int]:
    """(own samples, inclusive samples, total) by function from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [function_of(f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ")]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    return own, incl, total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=int, default=10, help="seconds of sampling")
    p.add_argument("--rate", type=int, default=250, help="samples per second")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--native", action="store_true", help="include C frames")
    p.add_argument("--path", default="/bench", help="/bench (token route) or /public")
    p.add_argument("--output", help="also keep the raw py-spy output in this file")
    p.add_argument("--tls", action="store_true", help="the gateway's listener on TLS")
    p.add_argument("--close", action="store_true", help="Connection: close on every request")
    a = p.parse_args()
    spy = py_spy()
    if loadgen.WRK is None:
        sys.exit("wrk is needed for profiling: apt-get install -y wrk")
    args = argparse.Namespace(connections=32, no_nginx=False, no_wrk=False, skip_tls=not a.tls)
    with temp_dir() as tmp:
        stack = Stack(tmp)
        bench = Bench(args, tmp, stack)
        try:
            up = bench.start_upstream()
            idp = bench.start_idp()
            cfg = gateway_config(free_port(), up, idp, tls=bench.cert)
            gw, port = bench.start_gateway("gateway", cfg, bench.core(1))
            logs = [bench.access_logs["gateway"]]
            url = f"{'https' if a.tls else 'http'}://127.0.0.1:{port}{a.path}"
            w = Workload(
                "gw", "gateway", gw, url, token=a.path != "/public", log_files=logs, close=a.close
            )
            bench.check(w)
            bench.measure(w, 2, bench.core(0))  # warm-up
            result: dict[str, object] = {}
            load_s = a.duration + 3
            loader = threading.Thread(
                target=lambda: result.update(s=bench.measure(w, load_s, bench.core(0)))
            )
            loader.start()
            time.sleep(1)
            raw = tmp / "profile.txt"
            argv = [spy, "record", "-p", str(gw.pid), "-d", str(a.duration), "-r", str(a.rate)]
            argv += ["-f", "raw", "-o", str(raw), "--full-filenames"]
            # --native needs to pause the process while it unwinds; otherwise do not pause it
            argv.append("--native" if a.native else "--nonblocking")
            done = subprocess.run(  # py-spy shares core 0 with wrk, not the gateway's core
                pin(bench.core(0)) + argv,
                capture_output=True,
                text=True,
                timeout=a.duration + 60,
                check=False,
            )
            loader.join(timeout=load_s + 60)
            if done.returncode != 0 or not raw.exists():
                print(f"py-spy failed ({done.returncode}): {done.stderr[-2000:]}", file=sys.stderr)
                return 1
            text = raw.read_text()
            if a.output:
                Path(a.output).write_text(text)
        finally:
            stack.close()
            for f in bench._out:
                f.close()
    own, incl, total = parse_raw(text)
    s = result.get("s")
    if s is not None:
        print(
            f"load during profiling: {s.rps:.0f} req/s, {s.cpu_us:.1f} CPU µs/req "  # type: ignore[attr-defined]
            f"(py-spy sampling slows the gateway), path {a.path}"
        )
    print(f"{total} samples (non-idle) over {a.duration}s at {a.rate}/s\n")
    print(f"top {a.top} by own samples:")
    for func, n in own.most_common(a.top):
        print(f"  {n / total * 100:5.1f}%  {func}")
    print(f"\ntop {a.top} by inclusive samples (entry frames left out):")
    inner = [(f, n) for f, n in incl.most_common() if not f.startswith(_ENTRY)]
    for func, n in inner[: a.top]:
        print(f"  {n / total * 100:5.1f}%  {func}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
