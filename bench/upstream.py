"""The built-in upstream (used when nginx is not installed): `{"ok":true}` to every request.

An asyncio Protocol on httptools and uvloop, keep-alive, pipelining-safe (answers are written
synchronously in request order), request bodies read and discarded.

    python bench/upstream.py --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import httptools
import uvloop

BODY = b'{"ok":true}'
KEEP = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)
CLOSE = KEEP.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)


class Upstream(asyncio.Protocol):
    """One client connection."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._close()
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            self._close()

    def on_message_complete(self) -> None:
        keep = self.parser.should_keep_alive()  # only meaningful here
        if self.transport is not None:
            self.transport.write(KEEP if keep else CLOSE)
        if not keep:
            self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, host, port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
