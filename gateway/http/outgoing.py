"""The request an upstream receives, as a value (`OutgoingRequest`), and its HTTP/1.1 rendering.

What goes into it is the forward stage's policy (`gateway/upstream_headers.py`); how it is
framed on the wire is decided here only, so that another upstream protocol renders the same
value its own way.
"""

from __future__ import annotations

from gateway.http.exchange import BODY_CHUNKED, BODY_LENGTH
from gateway.http.fastscan import join_fields


class OutgoingRequest:
    """Method, target, the client's headers that go on, and the headers the gateway writes.

    `host` is empty when the client sent none (HTTP/1.0): the target's authority is sent.
    `forwarded_proto` / `forwarded_host` are None when a trusted proxy's own copy is among
    `headers` (or, for the host, when there is none to tell); `added` holds extra header lines
    the gateway adds (the identity headers, rendered once per token), `trace_lines` the trace
    context's (gateway/tracecontext.py `RequestTrace.lines`). Built once per request;
    rendered once per upstream attempt (a retry on a fresh connection may go to another target
    with another base path)."""

    __slots__ = (
        "added",
        "body_mode",
        "content_length",
        "forwarded_for",
        "forwarded_host",
        "forwarded_proto",
        "headers",
        "host",
        "method",
        "path",
        "query",
        "request_id",
        "trace_lines",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        host: str,
        headers: list[tuple[bytes, bytes]],
        forwarded_for: str,
        forwarded_proto: str | None,
        forwarded_host: str | None,
        request_id: str,
        body_mode: int,
        content_length: int,
        added: bytes,
        trace_lines: str = "",
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.host = host
        self.headers = headers
        self.forwarded_for = forwarded_for
        self.forwarded_proto = forwarded_proto
        self.forwarded_host = forwarded_host
        self.request_id = request_id
        self.body_mode = body_mode
        self.content_length = content_length
        self.added = added
        self.trace_lines = trace_lines  # traceparent / tracestate lines, rendered upstream

    @property
    def chunked(self) -> bool:
        """Whether the body is sent with chunked framing."""
        return self.body_mode == BODY_CHUNKED

    def render(self, base_path: str, authority: str) -> bytes:
        """The HTTP/1.1 request head, for a target whose URL path is `base_path` and whose
        `host[:port]` is `authority`."""
        path = base_path + self.path
        query = self.query
        target = path + "?" + query if query else path
        host = self.host or authority
        proto = self.forwarded_proto
        fhost = self.forwarded_host
        proto_line = "x-forwarded-proto: " + proto + "\r\n" if proto is not None else ""
        host_line = "x-forwarded-host: " + fhost + "\r\n" if fhost is not None else ""
        # The request line and the headers the gateway writes, as one str: compiled, an f-string
        # of str pieces is one allocation, and one encode (all latin-1: they came off the wire)
        first = (
            f"{self.method} {target} HTTP/1.1\r\nhost: {host}\r\nx-forwarded-for: "
            f"{self.forwarded_for}\r\nx-request-id: {self.request_id}\r\n"
            f"{proto_line}{host_line}{self.trace_lines}"
        ).encode("latin-1")
        mode = self.body_mode
        if mode == BODY_CHUNKED:
            last = b"transfer-encoding: chunked\r\n" + self.added + b"\r\n"
        elif mode == BODY_LENGTH:
            length = str(self.content_length)
            last = b"content-length: " + length.encode() + b"\r\n" + self.added + b"\r\n"
        elif self.added:
            last = self.added + b"\r\n"
        else:
            last = b"\r\n"
        # the client's headers between them, joined in C (gateway/http/_scan.c)
        return join_fields(first, self.headers, last)
