"""Certificate reload in a real `gateway serve` process (uvloop, as in production): SIGHUP and a
Kubernetes-style Secret update (files swapped through a `..data` symlink) give new handshakes
the new pair, an open keep-alive connection goes on, a pair that does not load is refused once
in the log and the old one keeps serving."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from pathlib import Path

import aiohttp
import orjson

from tests.fixtures.pki import Issued, Pki
from tests.fixtures.process import GatewayProcess
from tests.tls.client import TlsClient, one_request, trusting


class SecretDir:
    """A mounted Kubernetes Secret: `tls.crt` / `tls.key` are symlinks into `..data`, itself a
    symlink to a timestamped folder that an update replaces in one rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.version = 0
        for name in ("tls.crt", "tls.key"):
            (root / name).symlink_to(f"..data/{name}")

    @property
    def cert_file(self) -> str:
        return str(self.root / "tls.crt")

    @property
    def key_file(self) -> str:
        return str(self.root / "tls.key")

    def put(self, cert_file: str, key_file: str) -> None:
        self.version += 1
        folder = self.root / f"..v{self.version}"
        folder.mkdir()
        shutil.copy(cert_file, folder / "tls.crt")
        shutil.copy(key_file, folder / "tls.key")
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(folder.name)
        os.replace(tmp, self.root / "..data")  # the atomic swap kubelet does


def events(gp: GatewayProcess, name: str) -> list[dict]:
    out = []
    for line in gp.log.read_text().splitlines():
        if line.startswith("{"):
            event = orjson.loads(line)
            if event.get("event") == name:
                out.append(event)
    return out


async def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def served_certificate(port: int, pki: Pki) -> bytes:
    client = await TlsClient.open(port, trusting(pki))
    try:
        assert (await client.request("GET", "/probe")).status == 200
        return client.server_certificate()
    finally:
        await client.close()


async def metrics(gp: GatewayProcess) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{gp.admin}/metrics") as r:
        return await r.text()


async def start(tmp_path: Path, upstream: str, pki: Pki, secret: SecretDir) -> GatewayProcess:
    gp = GatewayProcess(tmp_path, upstream)
    gp.config["listen"]["tls"] = {
        "cert_file": secret.cert_file,
        "key_file": secret.key_file,
        "client_ca_file": pki.ca_file,
    }
    gp.write()
    await gp.start()
    return gp


def renewed(pki: Pki, name: str) -> Issued:
    return pki.leaf(name, ["localhost", "127.0.0.1"])


async def test_sighup_reloads_the_pair_and_keeps_open_connections(echo_upstream, pki, tmp_path):
    """SIGHUP: once the reload is done, new handshakes get the new certificate; a connection
    opened before goes on with its own; a bad pair is then refused (one error, counted) and the
    last good one keeps serving; the verified client certificate reaches the upstream."""
    secret = SecretDir(tmp_path / "secret")
    secret.put(pki.server.cert_file, pki.server.key_file)
    gp = await start(tmp_path, echo_upstream.url, pki, secret)
    try:
        kept = await TlsClient.open(gp.port, trusting(pki, pki.client))
        first = await kept.request("GET", "/before")
        assert first.status == 200
        assert first.upstream("x-forwarded-proto") == ["https"]
        assert len(first.upstream("x-forwarded-client-cert")) == 1
        assert kept.server_certificate() == pki.server.der

        new = renewed(pki, "renewed")
        secret.put(new.cert_file, new.key_file)
        reloads = len(events(gp, "config_reloaded"))
        assert gp.proc is not None
        gp.proc.send_signal(signal.SIGHUP)

        async def reloaded() -> bool:
            return len(events(gp, "config_reloaded")) > reloads

        await wait_for(reloaded, 10, "the SIGHUP reload")
        assert await served_certificate(gp.port, pki) == new.der
        assert [(e["tls"], e["level"]) for e in events(gp, "tls_reloaded")] == [("listen", "info")]
        again = await kept.request("GET", "/after")  # the old connection was not dropped
        assert again.status == 200
        assert kept.server_certificate() == pki.server.der
        assert again.upstream("x-forwarded-client-cert") == first.upstream(
            "x-forwarded-client-cert"
        )

        other = renewed(pki, "other")
        secret.put(other.cert_file, new.key_file)  # a key that does not match the certificate
        gp.proc.send_signal(signal.SIGHUP)

        async def refused() -> bool:
            return bool(events(gp, "tls_reload_refused"))

        await wait_for(refused, 10, "tls_reload_refused")
        assert await served_certificate(gp.port, pki) == new.der
        await asyncio.sleep(2.5)  # the file watcher ran again: the same pair is not logged twice
        gp.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        assert len(events(gp, "tls_reload_refused")) == 1
        assert await served_certificate(gp.port, pki) == new.der
        text = await metrics(gp)
        assert 'gateway_tls_reloads_total{outcome="applied",tls="listen"} 1.0' in text
        assert 'gateway_tls_reloads_total{outcome="refused",tls="listen"} 1.0' in text
        assert (await kept.request("GET", "/still")).status == 200
        await kept.close()
    finally:
        assert gp.stop() == 0


async def test_a_secret_update_is_picked_up_without_a_signal(echo_upstream, pki, tmp_path):
    """The files' content is watched (every 2 s): a Secret update through the `..data` symlink
    serves new handshakes within seconds, with no signal and no config reload."""
    secret = SecretDir(tmp_path / "secret")
    secret.put(pki.server.cert_file, pki.server.key_file)
    gp = await start(tmp_path, echo_upstream.url, pki, secret)
    try:
        kept = await TlsClient.open(gp.port, trusting(pki))
        assert (await kept.request("GET", "/before")).status == 200
        new = renewed(pki, "rotated")
        secret.put(new.cert_file, new.key_file)
        started = time.monotonic()

        async def rotated() -> bool:
            return await served_certificate(gp.port, pki) == new.der

        await wait_for(rotated, 10, "the new certificate")
        print(f"new certificate served {time.monotonic() - started:.1f}s after the swap")
        assert events(gp, "config_reloaded") == []
        assert [e["tls"] for e in events(gp, "tls_reloaded")] == ["listen"]
        assert (await kept.request("GET", "/after")).status == 200
        assert kept.server_certificate() == pki.server.der
        await kept.close()
        got = await one_request(gp.port, trusting(pki), path="/x")
        assert got.upstream("x-forwarded-client-cert") == []  # it presented no certificate
    finally:
        assert gp.stop() == 0
