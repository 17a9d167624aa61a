"""Process plumbing shared by the bench scripts: start, pin, wait for, measure and stop processes.

Every process is started in its own session (its own process group), so `Proc.stop()` ends it
and whatever it forked (nginx workers, gateway workers) by group id, never by name. CPU time is
read from /proc/<pid>/stat (utime + stime) of the process and all its descendants.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"


def cores() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def pin(core: int | None) -> list[str]:
    """`taskset -c CORE` prefix, or nothing when unpinned or taskset is missing."""
    if core is None or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", str(core)]


def free_port() -> int:
    """A port free on 127.0.0.1 right now (fixed ports are needed for SO_REUSEPORT workers)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0, proc: Proc | None = None) -> None:
    """Block until something accepts on 127.0.0.1:port; fail loudly on timeout or early exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}: {proc.tail()}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {HOST}:{port} after {timeout}s")


class Proc:
    """A child process in its own process group, with its output going to files."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        *,
        stdout: IO[bytes] | int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.err_path = log_dir / f"{name}.stderr"
        self._err = self.err_path.open("wb")
        out = stdout if stdout is not None else subprocess.DEVNULL
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=self._err,
            start_new_session=True,
            env=env,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, chars: int = 2000) -> str:
        """The end of the process's stderr, for error messages."""
        try:
            return self.err_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def pids(self) -> list[int]:
        """This process and all its descendants (nginx workers, gateway worker processes)."""
        out, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            with contextlib.suppress(OSError):
                for task in os.listdir(f"/proc/{pid}/task"):
                    kids = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                    todo.extend(int(k) for k in kids)
        return out

    def cpu_seconds(self) -> float:
        """utime + stime of the process tree, in seconds."""
        return sum(cpu_seconds(pid) for pid in self.pids())

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left; idempotent."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # children that outlived their leader too
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        self._err.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process from /proc/<pid>/stat (0 if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rfind(")") + 2 :].split()  # the name may hold spaces; fields start at 3
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Stack:
    """Every process started for one bench run; `close()` stops them all, newest first."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    def start(self, name: str, argv: Sequence[str], **kw: object) -> Proc:
        proc = Proc(name, argv, self.log_dir, **kw)  # type: ignore[arg-type]
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()


def serve_helper(
    build: Callable[[argparse.Namespace], Any], description: str, **extra: Any
) -> None:
    """`main()` of a helper server script: `--host`, `--port` and the script's own options
    (`extra`: name -> argparse kwargs), then the aiohttp app that `build(args)` returns, on
    uvloop, with no access log."""
    import uvloop
    from aiohttp import web

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    for name, kwargs in extra.items():
        p.add_argument(f"--{name}", **kwargs)
    args = p.parse_args()
    web.run_app(
        build(args), host=args.host, port=args.port, access_log=None, print=None,
        loop=uvloop.new_event_loop(),
    )  # fmt: skip
