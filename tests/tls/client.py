"""A small HTTP/1.1 client over TLS (asyncio streams) for the TLS listener tests: one
connection, several requests in turn, the server's certificate and the answers as read."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field

import orjson

from tests.fixtures.pki import Issued, Pki


def trusting(pki: Pki, cert: Issued | None = None, **options: object) -> ssl.SSLContext:
    """A client context trusting the test root CA, presenting `cert` when given."""
    ctx = ssl.create_default_context(cafile=pki.ca_file)
    if cert is not None:
        ctx.load_cert_chain(cert.cert_file, cert.key_file)
    for name, value in options.items():
        setattr(ctx, name, value)
    return ctx


@dataclass
class Answer:
    status: int
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def upstream_headers(self) -> list[tuple[str, str]]:
        """What the echo upstream says it received (names as the gateway wrote them)."""
        return [(k, v) for k, v in orjson.loads(self.body)["headers"]]

    def upstream(self, name: str) -> list[str]:
        """The values the echo upstream received under `name`, compared case-insensitively."""
        return [v for k, v in self.upstream_headers() if k.lower() == name.lower()]


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    answer = Answer(int(lines[0].split()[1]))
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            answer.headers.setdefault(name.strip().lower(), []).append(value.strip())
    length = answer.header("content-length")
    if length is not None:
        answer.body = await reader.readexactly(int(length))
    elif "chunked" in (answer.header("transfer-encoding") or ""):
        while True:
            size = int((await reader.readline()).split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readline()
                break
            answer.body += await reader.readexactly(size)
            await reader.readline()
    else:
        answer.body = await reader.read()
    return answer


class TlsClient:
    """One TLS connection to 127.0.0.1:port, verified as `localhost`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext) -> TlsClient:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
        )
        return cls(reader, writer)

    @property
    def ssl_object(self) -> ssl.SSLObject:
        return self.writer.get_extra_info("ssl_object")

    def server_certificate(self) -> bytes:
        der = self.ssl_object.getpeercert(binary_form=True)
        assert der is not None
        return der

    async def request(
        self,
        method: str = "GET",
        path: str = "/",
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
        raw: bytes | None = None,
    ) -> Answer:
        """Send one request (or `raw` bytes) and read its answer."""
        if raw is None:
            lines = [f"{method} {path} HTTP/1.1", "Host: localhost"]
            lines += [f"{k}: {v}" for k, v in headers or []]
            if body is not None:
                lines.append(f"Content-Length: {len(body)}")
            raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
        self.writer.write(raw)
        await self.writer.drain()
        return await asyncio.wait_for(read_answer(self.reader), 10)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, asyncio.TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 5)


async def one_request(port: int, ctx: ssl.SSLContext, **kw: object) -> Answer:
    client = await TlsClient.open(port, ctx)
    try:
        return await client.request(**kw)  # type: ignore[arg-type]
    finally:
        await client.close()


def client_hello() -> bytes:
    """The first flight of a real TLS client (a ClientHello record)."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16"  # a handshake record
    return hello
