"""`gateway demo --tls`: the demo on HTTPS with a throwaway CA; every printed command uses
`--cacert`, the self-test passes, and the certificates are gone when it stops."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from gateway.demo import demo_steps
from tests.fixtures.servers import free_port


def test_demo_tls_self_test():
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "demo",
            "--tls",
            "--self-test",
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "BAD" not in res.stdout
    counted = re.search(r"demo: (\d+) of (\d+) answers as expected", res.stdout)
    assert counted is not None and counted[1] == counted[2], res.stdout[-500:]
    plain = len(demo_steps("c", "i"))
    assert int(counted[2]) > plain  # the TLS row (client certificate) and the bound-token rows
    commands = [line for line in res.stdout.splitlines() if "curl -i" in line]
    assert len(commands) == int(counted[2])  # one printed command per checked answer
    ca = re.search(r"--cacert (\S+/ca\.crt)", res.stdout)
    assert ca is not None
    assert all(f"--cacert {ca.group(1)}" in c and "https://127.0.0.1:" in c for c in commands)
    assert sum("--cert " in c for c in commands) == 1
    assert re.search(
        r'ok  200 client certificate .*Hash=[0-9a-f]{64};Subject="CN=demo client"', res.stdout
    )
    assert not Path(ca.group(1)).parent.exists()  # the throwaway CA is removed
