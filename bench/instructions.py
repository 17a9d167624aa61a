"""Instructions per request of the gateway's own work, counted by callgrind: the same figure on
every run, however busy the machine (the req/s of `make bench` move by 10-30 % here).

Runs `bench/hotpath.py` (the real server and upstream protocol objects, in-memory transports)
under `valgrind --tool=callgrind` with two request counts at once and divides the difference, so
that start-up cancels out. `--pure` also counts a pure-Python copy of the same source (the
compiled modules left out), for the compiled/pure ratio. Needs valgrind (Debian: valgrind);
about a minute and a half per row on 2 cores.

    .venv/bin/python bench/instructions.py [--pure] [--paths /bench /public] [--trace-context]
        [--sampled 0.01 1.0]

`--trace-context` counts each path a second time with `tracing: {}` (no collector: every
request gets a new trace context, nothing is recorded), for the cost of the context alone.
`--sampled RATIO...` counts each path again with `tracing:` exporting to a real collector
(bench/otlp_sink.py, started here, not counted) at each `sample_ratio`: the spans' cost on the
request path and in the export thread (the run waits until every span is exported), with the
cost of one recorded request in requests' worth. The ratio 1 rows run a quarter of the requests.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from procs import free_port, wait_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SMALL, LARGE = 2000, 6000


def total_instructions(
    path: str, requests: int, env: dict[str, str], out: Path, extra: tuple[str, ...] = ()
) -> int:
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            str(HERE / "hotpath.py"),
            "--requests",
            str(requests),
            "--path",
            path,
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"hotpath.py under callgrind failed:\n{done.stderr[-2000:]}")
    m = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
    if m is None:
        sys.exit(f"no totals in {out}")
    return int(m.group(1))


def per_request(
    path: str, env: dict[str, str], tmp: Path, extra: tuple[str, ...] = (), scale: int = 1
) -> float:
    """(I(LARGE) - I(SMALL)) / (LARGE - SMALL): the runs share every start-up cost. A third
    run in the middle checks that: both halves must give the same slope (a run whose start-up
    or steady state differed would be seen), or the figure is refused. `scale` divides the
    request counts (for expensive rows)."""
    small, large = SMALL // scale, LARGE // scale
    sizes = (small, (small + large) // 2, large)
    with ThreadPoolExecutor(3) as pool:
        i_small, i_mid, i_large = pool.map(
            lambda n: total_instructions(path, n, env, tmp / f"cg-{n}.out", extra), sizes
        )
    low = (i_mid - i_small) / (sizes[1] - sizes[0])
    high = (i_large - i_mid) / (sizes[2] - sizes[1])
    if abs(high - low) > 0.02 * max(low, high):
        sys.exit(f"{path}: unstable count ({low:,.0f} vs {high:,.0f} per request); run again")
    return (i_large - i_small) / (sizes[2] - sizes[0])


def pure_copy(tmp: Path) -> Path:
    """The gateway package without its compiled modules, importable from the returned dir."""
    shutil.copytree(
        ROOT / "gateway",
        tmp / "pure" / "gateway",
        ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"),
    )
    return tmp / "pure"


def build_of(env: dict[str, str], cwd: Path) -> str:
    """What hotpath.py will import (run from elsewhere: the current dir would come first)."""
    return subprocess.run(
        [sys.executable, "-c", "import gateway; print(gateway.build_kind())"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def sampled(
    label: str,
    kind: str,
    path: str,
    env: dict[str, str],
    tmp: Path,
    ratio: float,
    plain: float,
    context: float,
) -> None:
    """One `--sampled` row: instructions per request with spans exported at `ratio`, and what
    one recorded request costs beyond the trace context, in requests (without tracing)."""
    port = free_port()
    sink = subprocess.Popen(
        [sys.executable, str(HERE / "otlp_sink.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_port(port)
        extra = ("--otlp", f"http://127.0.0.1:{port}", "--sample-ratio", str(ratio))
        count = per_request(path, env, tmp, extra, scale=4 if ratio > 0.1 else 1)
    finally:
        sink.terminate()
        sink.wait(10)
    each = (count - context) / ratio if ratio else 0.0
    print(
        f"{label:10s} ({kind:11s}) {path:8s} {count:9,.0f} instructions per request with "
        f"sample_ratio {ratio:g} ({count / plain:.3f}x); a recorded request costs {each:,.0f} "
        f"more ({each / plain:.1f} requests' worth)",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pure", action="store_true", help="also count the pure-Python build")
    p.add_argument("--paths", nargs="+", default=["/bench", "/public"])
    p.add_argument("--trace-context", action="store_true", help="also count with `tracing: {}`")
    p.add_argument(
        "--sampled", nargs="*", type=float, default=[], metavar="RATIO",
        help="also count with spans exported to a collector at these sample ratios",
    )  # fmt: skip
    args = p.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind not found (apt-get install -y valgrind)")
    base = {**os.environ, "PYTHONHASHSEED": "0"}  # same dict layouts in every run
    with tempfile.TemporaryDirectory(prefix="gw-instructions-") as d:
        tmp = Path(d)
        builds = [("installed", base)]
        if args.pure:
            builds.append(("pure copy", {**base, "PYTHONPATH": str(pure_copy(tmp))}))
        results: dict[tuple[str, str], float] = {}
        for label, env in builds:
            kind = build_of(env, tmp)
            for path in args.paths:
                results[(label, path)] = per_request(path, env, tmp)
                print(
                    f"{label:10s} ({kind:11s}) {path:8s} "
                    f"{results[(label, path)]:9,.0f} instructions per request",
                    flush=True,
                )
                traced = 0.0
                if args.trace_context or args.sampled:
                    traced = per_request(path, env, tmp, ("--trace-context",))
                    print(
                        f"{label:10s} ({kind:11s}) {path:8s} {traced:9,.0f} instructions per "
                        f"request with a trace context ({traced / results[(label, path)]:.3f}x)",
                        flush=True,
                    )
                for ratio in args.sampled:
                    sampled(label, kind, path, env, tmp, ratio, results[(label, path)], traced)
        if args.pure:
            for path in args.paths:
                ratio = results[("installed", path)] / results[("pure copy", path)]
                print(f"installed / pure-Python, {path}: {ratio:.2f}x the instructions")
        if "/bench" in args.paths and "/public" in args.paths:
            for label, _ in builds:
                ratio = results[(label, "/bench")] / results[(label, "/public")]
                print(f"{label}: token route / public route = {ratio:.2f}x the instructions")


if __name__ == "__main__":
    main()
