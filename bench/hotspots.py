"""Where the instructions of one request go: the top functions by instructions per request,
counted by callgrind (the profile behind `bench/instructions.py`'s single figure).

Runs `bench/hotpath.py` under `valgrind --tool=callgrind` twice (SMALL and LARGE requests),
annotates both with `callgrind_annotate` and divides the difference per function by the
difference in requests, so that start-up cancels out. Functions are keyed by name without the
object file: the same OpenSSL symbol can be attributed to the system libcrypto in one run and to
the copy inside `cryptography`'s wheel in the other, which would otherwise show start-up work as
per-request cost.

    .venv/bin/python bench/hotspots.py [--path /bench] [--top 30] [--inclusive]
        [--trace-context]

`--inclusive` lists the gateway's own compiled functions (mypyc's `CPyDef_*`) and httptools'
callbacks by inclusive cost instead: what each stage costs with everything it calls.
`--trace-context` profiles with `tracing: {}` (every request gets a new trace context). Needs
valgrind; about a minute and a half on 2 cores.
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

HERE = Path(__file__).resolve().parent
SMALL, LARGE = 2000, 6000
_LINE = re.compile(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S.*)$")


def run(
    path: str, requests: int, out: Path, inclusive: bool, extra: tuple[str, ...] = ()
) -> dict[str, int]:
    """Instructions by function name (self, or inclusive) of one callgrind run."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
         str(HERE / "hotpath.py"), "--requests", str(requests), "--path", path, *extra],
        env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"hotpath.py under callgrind failed:\n{done.stderr[-2000:]}")
    annotated = subprocess.run(
        ["callgrind_annotate", "--auto=no", "--threshold=100",
         f"--inclusive={'yes' if inclusive else 'no'}", str(out)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    costs: dict[str, int] = {}
    for line in annotated.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        try:
            value = int(m.group(1).replace(",", ""))
        except ValueError:
            continue
        name = re.sub(r"\s*\[.*\]$", "", m.group(2).strip())  # the object file
        name = name.rsplit(":", 1)[-1] if ":" in name else name  # the source file
        name = re.sub(r"\s*\(\d[\d,]*x\)$", "", name)
        # inclusive: a function appears once per object it is attributed to; keep the largest
        costs[name] = max(costs.get(name, 0), value) if inclusive else costs.get(name, 0) + value
    return costs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", default="/bench", choices=["/bench", "/public", "/limited"])
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--inclusive", action="store_true", help="the gateway's functions, inclusive")
    p.add_argument("--trace-context", action="store_true", help="with `tracing: {}`")
    args = p.parse_args()
    extra = ("--trace-context",) if args.trace_context else ()
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        sys.exit("valgrind not found (apt-get install -y valgrind)")
    with tempfile.TemporaryDirectory(prefix="gw-hotspots-") as d:
        tmp = Path(d)
        with ThreadPoolExecutor(2) as pool:
            small, large = pool.map(
                lambda n: run(args.path, n, tmp / f"cg-{n}.out", args.inclusive, extra),
                (SMALL, LARGE),
            )
    per = {k: (large.get(k, 0) - small.get(k, 0)) / (LARGE - SMALL) for k in large.keys() | small}
    total = per.pop("PROGRAM TOTALS", 0.0)
    print(f"{args.path}: {total:,.0f} instructions per request (callgrind, {LARGE} - {SMALL})")
    rows = sorted(per.items(), key=lambda kv: -kv[1])
    if args.inclusive:
        rows = [(k, v) for k, v in rows if k.startswith(("CPyDef_", "__pyx_f_9httptools"))]
    for name, cost in rows[: args.top]:
        print(f"{cost:9,.0f} {cost / total:6.1%}  {name[:110]}")


if __name__ == "__main__":
    main()
