"""TLS contexts from the config (gateway/tls.py), against real handshakes on 127.0.0.1: what a
listener offers, client verification, and certificate reload without dropping connections."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.config.models import ClientTlsConfig, ListenerTlsConfig
from gateway.errors import ConfigError
from gateway.tls import client_context, client_tls, listener_tls
from tests.fixtures.pki import Pki


class Echo(asyncio.Protocol):
    """Answers each read with the bytes read."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def serve(ctx: ssl.SSLContext) -> tuple[asyncio.Server, int]:
    server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0, ssl=ctx)
    return server, server.sockets[0].getsockname()[1]


def trusting(pki: Pki, **kw: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.ca_file)
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


async def handshake(port: int, ctx: ssl.SSLContext, name: str = "localhost") -> ssl.SSLObject:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=name)
    try:
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        return writer.get_extra_info("ssl_object")
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


REFUSED = (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)


async def test_listener_offers_tls12_and_13_aead_and_alpn(pki):
    """TLS 1.3 by default, TLS 1.2 only with ECDHE + AEAD, ALPN http/1.1; TLS 1.1 refused."""
    outer, _ = listener_tls(
        "listen", ListenerTlsConfig(cert_file=pki.server.cert_file, key_file=pki.server.key_file)
    )
    server, port = await serve(outer)
    try:
        client = trusting(pki)
        client.set_alpn_protocols(["h2", "http/1.1"])
        obj = await handshake(port, client)
        assert obj.version() == "TLSv1.3"
        assert obj.selected_alpn_protocol() == "http/1.1"
        tls12 = trusting(pki, maximum_version=ssl.TLSVersion.TLSv1_2)
        obj = await handshake(port, tls12)
        name = obj.cipher()[0]
        assert name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name), name
        weak = trusting(pki, maximum_version=ssl.TLSVersion.TLSv1_2)
        weak.set_ciphers("AES128-SHA:AES256-SHA")  # RSA key exchange, CBC: never offered
        with pytest.raises(REFUSED):
            await handshake(port, weak)
    finally:
        server.close()


async def test_min_version_13_refuses_tls12(pki):
    """`min_version: "1.3"` refuses a TLS 1.2 client."""
    cfg = ListenerTlsConfig(
        cert_file=pki.server.cert_file, key_file=pki.server.key_file, min_version="1.3"
    )
    outer, _ = listener_tls("listen", cfg)
    server, port = await serve(outer)
    try:
        with pytest.raises(REFUSED):
            await handshake(port, trusting(pki, maximum_version=ssl.TLSVersion.TLSv1_2))
        assert (await handshake(port, trusting(pki))).version() == "TLSv1.3"
    finally:
        server.close()


async def test_required_client_certificate(pki):
    """client_auth: required: no certificate, or one from another CA, never completes the
    handshake; the CA's client certificate does."""
    cfg = ListenerTlsConfig(
        cert_file=pki.server.cert_file,
        key_file=pki.server.key_file,
        client_ca_file=pki.ca_file,
        client_auth="required",
    )
    outer, _ = listener_tls("listen", cfg)
    server, port = await serve(outer)
    try:
        good = trusting(pki)
        good.load_cert_chain(pki.client.cert_file, pki.client.key_file)
        await handshake(port, good)
        stranger = trusting(pki)
        stranger.load_cert_chain(pki.stranger.cert_file, pki.stranger.key_file)
        for ctx in (trusting(pki), stranger):
            with pytest.raises(REFUSED):
                await handshake(port, ctx)
    finally:
        server.close()


async def test_certificate_reload_serves_new_handshakes_keeps_open_ones(pki, tmp_path):
    """A changed pair is taken by refresh(): new handshakes see the new certificate, an open
    connection goes on; a pair that does not load is refused once, the last good one serves."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(pki.server.cert_file, cert)
    shutil.copy(pki.server.key_file, key)
    outer, holder = listener_tls(
        "listen", ListenerTlsConfig(cert_file=str(cert), key_file=str(key))
    )
    server, port = await serve(outer)
    try:
        client = trusting(pki)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="localhost"
        )
        first = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert first == pki.server.der
        assert not holder.refresh()  # nothing changed
        new = pki.leaf("server-2", ["localhost", "127.0.0.1"])
        shutil.copy(new.cert_file, cert)
        shutil.copy(new.key_file, key)
        assert holder.refresh()
        obj = await handshake(port, client)
        assert obj.getpeercert(binary_form=True) == new.der
        writer.write(b"still")  # the connection opened before the reload goes on
        assert await reader.readexactly(5) == b"still"
        writer.close()
        cert.write_bytes(
            pki.server.cert.public_bytes(
                __import__("cryptography").hazmat.primitives.serialization.Encoding.PEM
            )
        )  # key no longer matches
        with capture_logs() as logs:
            assert not holder.refresh()
            assert not holder.refresh()  # the same bad content is logged once
        refused = [e for e in logs if e["event"] == "tls_reload_refused"]
        assert len(refused) == 1 and refused[0]["tls"] == "listen"
        assert (await handshake(port, client)).getpeercert(binary_form=True) == new.der
    finally:
        server.close()


def test_unloadable_pair_at_start_is_a_config_error(pki, tmp_path):
    """A missing file or a key that does not match the certificate: a ConfigError naming the
    listener, never a traceback."""
    missing = ListenerTlsConfig(cert_file=str(tmp_path / "nope.crt"), key_file=pki.server.key_file)
    with pytest.raises(ConfigError, match="listen: cannot load TLS files"):
        listener_tls("listen", missing)
    mismatched = ListenerTlsConfig(cert_file=pki.server.cert_file, key_file=pki.client.key_file)
    with pytest.raises(ConfigError, match="listen: cannot load TLS files"):
        listener_tls("listen", mismatched)


async def test_client_context_verifies_ca_name_and_expiry(pki):
    """Client side: the configured CA is trusted, the name is verified, an expired or
    unknown certificate fails; insecure_skip_verify accepts anything and is warned about."""

    async def against(issued, ctx, name="localhost"):
        plain = ListenerTlsConfig(cert_file=issued.cert_file, key_file=issued.key_file)
        outer, _ = listener_tls("upstream", plain)
        server, port = await serve(outer)
        try:
            return await handshake(port, ctx, name)
        finally:
            server.close()

    trusted = client_context(ClientTlsConfig(ca_file=pki.ca_file))
    await against(pki.server, trusted)
    for issued, name in (
        (pki.expired, "localhost"),
        (pki.wrong_name, "localhost"),
        (pki.server, "other.test"),
    ):
        with pytest.raises(ssl.SSLCertVerificationError):
            await against(issued, trusted, name)
    with pytest.raises(ssl.SSLCertVerificationError):
        await against(pki.server, client_context(ClientTlsConfig(ca_file=pki.other_ca_file)))
    with capture_logs() as logs:
        insecure = client_tls("upstream billing", ClientTlsConfig(insecure_skip_verify=True))
    assert [e["event"] for e in logs] == ["tls_verification_disabled"]
    await against(pki.expired, insecure.context, "anything")


async def test_ssl_objects_call_openssl_directly_on_both_sides(pki):
    """Listener and client contexts make `DirectSSLObject`s, whose read / write / pending are
    the C object's own (no Python frame per record); a real connection on each works, for
    small writes and for a megabyte split over many records and reads both ways, and the SNI
    callback still gets an SSLObject it can switch the context of."""
    import random

    from gateway.tls import DirectSSLObject

    outer, holder = listener_tls(
        "listen", ListenerTlsConfig(cert_file=pki.server.cert_file, key_file=pki.server.key_file)
    )
    client = client_context(ClientTlsConfig(ca_file=pki.ca_file))
    assert outer.sslobject_class is DirectSSLObject
    assert holder.context.sslobject_class is DirectSSLObject
    assert client.sslobject_class is DirectSSLObject
    accepted: list[ssl.SSLObject] = []

    class Capture(Echo):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            accepted.append(transport.get_extra_info("ssl_object"))

    server = await asyncio.get_running_loop().create_server(Capture, "127.0.0.1", 0, ssl=outer)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="localhost"
        )
        ours = writer.get_extra_info("ssl_object")
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"  # the server side is connected by now
        for obj in (ours, accepted[0]):
            assert isinstance(obj, DirectSSLObject)
            raw = obj._sslobj
            assert obj.read.__self__ is raw and obj.write.__self__ is raw
            assert obj.pending.__self__ is raw
        assert accepted[0].context is holder.context  # the SNI callback switched it
        assert ours.selected_alpn_protocol() == "http/1.1"
        blob = random.randbytes(1 << 20)
        writer.write(blob)
        assert await reader.readexactly(len(blob)) == blob
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
