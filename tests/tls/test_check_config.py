"""`gateway check-config` loads the listeners' TLS files as `serve` would, and says which
listeners are on TLS."""

from __future__ import annotations

import subprocess
import sys

import yaml

from tests.fixtures.pki import Pki


def _check(tmp_path, config: dict) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _config(pki: Pki, **tls_blocks: dict) -> dict:
    return {
        "listen": {"host": "0.0.0.0", "port": 8443, "tls": tls_blocks.get("listen")},
        "admin": {"host": "127.0.0.1", "port": 9901, "tls": tls_blocks.get("admin")},
        "upstreams": {"api": {"url": "http://127.0.0.1:3000"}},
        "routes": [{"name": "all", "path_prefix": "/", "upstream": "api"}],
    }


def test_check_config_shows_tls_listeners(tmp_path, pki):
    good = {"cert_file": pki.server.cert_file, "key_file": pki.server.key_file}
    mtls = {**good, "client_ca_file": pki.ca_file, "client_auth": "required"}
    res = _check(tmp_path, _config(pki, listen=mtls, admin=good))
    assert res.returncode == 0, res.stderr
    assert "listen      0.0.0.0:8443 (TLS 1.2+, client certificates required)" in res.stdout
    assert "admin       127.0.0.1:9901 (TLS 1.2+)" in res.stdout


def test_check_config_refuses_tls_files_that_do_not_load(tmp_path, pki):
    mismatched = {"cert_file": pki.server.cert_file, "key_file": pki.client.key_file}
    missing = {"cert_file": str(tmp_path / "gone.crt"), "key_file": pki.server.key_file}
    res = _check(tmp_path, _config(pki, listen=mismatched, admin=missing))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert lines[0] == "config error (2):"
    assert lines[1].startswith("  listen.tls: cannot load TLS files: ")
    assert lines[2] == f"  admin.tls: cannot read {tmp_path / 'gone.crt'}"
