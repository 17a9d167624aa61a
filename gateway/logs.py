"""Logging: structlog for events, a cheap buffered JSON writer for access lines.

JSON when stderr is not a TTY (or `log.format: json`), human-readable console output otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from typing import IO, Any, Final, TextIO, TypeAlias

import orjson
import structlog

from gateway.config.models import LogConfig

_LEVELS: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40}


def use_json(cfg: LogConfig) -> bool:
    if cfg.format is not None:
        return cfg.format == "json"
    return not sys.stderr.isatty()


def _orjson_dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def setup_logging(cfg: LogConfig, stream: TextIO | None = None) -> None:
    """Configure structlog once per process (and again on reload)."""
    json_out = use_json(cfg)
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if json_out
        else structlog.dev.ConsoleRenderer(colors=(stream or sys.stderr).isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[cfg.level]),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(_LEVELS[cfg.level], logging.WARNING), stream=sys.stderr)


def json_str(value: str) -> str:
    """`value` as a JSON string literal. Most values (paths, names) need no escaping and are
    quoted as they are; anything else goes through orjson."""
    return '"' + value + '"' if _plain(value) else orjson.dumps(value).decode()


def _plain(value: str) -> bool:
    """Nothing in `value` needs escaping in JSON (printable ASCII without `"` and `\\`)."""
    return value.isascii() and value.isprintable() and '"' not in value and "\\" not in value


_LITERALS: Final[dict[str, str]] = {}  # json_str of the few values that repeat (names, ips)
_LITERALS_MAX: Final = 10_000


def _literal(value: str) -> str:
    hit = _LITERALS.get(value)
    if hit is None:
        if len(_LITERALS) >= _LITERALS_MAX:
            _LITERALS.clear()
        hit = _LITERALS[value] = json_str(value)
    return hit


def access_line_py(
    request_id: str,
    client: str,
    method: str,
    path: str,
    route: str,
    status: int,
    upstream: str | None,
    duration_us: int,
    sent: int,
    reason: str | None,
    traceparent_line: str | None = None,
) -> bytes:
    """One JSON access line, rendered without building a dict: the same object orjson would
    write for those fields, in the same order (a property test holds it to that). Only str
    pieces go into the f-string: compiled, it is then one allocation.

    The Python twin of gateway/_access.c (`access_line` runs the C one when it is built).
    `traceparent_line` is the request's trace context as the upstream gets it
    ("traceparent: 00-<trace-id>-...\r\n", gateway/tracecontext.py): `trace_id` is its
    characters 16 to 48 (read there by the C twin; the caller makes no str for it).
    `request_id` is JSON-safe in practice (wire.request_id keeps or mints only `A-Za-z0-9._:-`),
    and so is the trace-id (32 hex digits); both are escaped anyway when they are not, which
    costs one test each. `duration_ms` is written from whole microseconds, 3 decimals."""
    up = "null" if upstream is None else _literal(upstream)
    tail = "}" if reason is None else ',"reason":' + _literal(reason) + "}"
    ms = str(duration_us // 1000) + "." + str(duration_us % 1000 + 1000)[1:]
    path_literal = f'"{path}"' if _plain(path) else orjson.dumps(path).decode()
    # str() in locals, not `{status!s}`: mypyc compiles a conversion as a format() call
    status_text, sent_text = str(status), str(sent)
    if not _plain(request_id):
        request_id = orjson.dumps(request_id).decode()[1:-1]
    if traceparent_line is not None:  # inside the request_id piece: no extra piece otherwise
        trace_id = trace_id_of(traceparent_line)
        if not _plain(trace_id):
            trace_id = orjson.dumps(trace_id).decode()[1:-1]
        request_id = request_id + '","trace_id":"' + trace_id
    return (
        f'{{"event":"access","request_id":"{request_id}","client":{_literal(client)},'
        f'"method":{_literal(method)},"path":{path_literal},"route":{_literal(route)},'
        f'"status":{status_text},"upstream":{up},"duration_ms":{ms},'
        f'"bytes":{sent_text}{tail}'
    ).encode()


def trace_id_of(traceparent_line: str) -> str:
    """The trace-id of a `traceparent` header line ("traceparent: " version "-" trace-id ...)."""
    return traceparent_line[16:48]


_CLine: TypeAlias = Callable[
    [str, str, str, str, str, int, str | None, int, int, str | None, str | None], bytes | None
]


def _c_twin() -> _CLine | None:
    """gateway._access.access_line (gateway/_access.c), or None in a build without C modules
    (GATEWAY_PURE_PYTHON=1)."""
    try:
        from gateway._access import access_line as c_line
    except ImportError:
        return None
    return c_line


_C_ACCESS_LINE: Final = _c_twin()


def access_line(
    request_id: str,
    client: str,
    method: str,
    path: str,
    route: str,
    status: int,
    upstream: str | None,
    duration_us: int,
    sent: int,
    reason: str | None,
    traceparent_line: str | None = None,
) -> bytes:
    """The JSON access line of access_line_py, written by its C twin when that is built (1.7k
    instructions a line with this call, against 6.2k; callgrind). The C one returns None for
    what it leaves to the Python one (a str with lone surrogates, a subclass, an int outside
    int64): that then gives the line, or raises what it raises."""
    if _C_ACCESS_LINE is not None:
        line = _C_ACCESS_LINE(
            request_id, client, method, path, route, status, upstream, duration_us, sent,
            reason, traceparent_line,
        )  # fmt: skip
        if line is not None:
            return line
    return access_line_py(
        request_id, client, method, path, route, status, upstream, duration_us, sent, reason,
        traceparent_line,
    )  # fmt: skip


class AccessLog:
    """One line per request. JSON lines are buffered and flushed by the event loop, not per line."""

    def __init__(self, enabled: bool, json_out: bool, stream: IO[bytes] | None = None) -> None:
        self.enabled = enabled
        self.json_out = json_out
        self._stream = stream
        self._buf: list[bytes] = []
        self._size = 0
        self._flush_scheduled = False
        self._log = structlog.get_logger("access")

    def record(
        self,
        request_id: str,
        client: str,
        method: str,
        path: str,
        route: str,
        status: int,
        upstream: str | None,
        duration_us: int,
        sent: int,
        reason: str | None,
        traceparent_line: str | None = None,
    ) -> None:
        """The access line of one request: JSON (access_line) or a structlog console event;
        `traceparent_line`: the request's trace context, as the upstream gets it (its trace-id
        goes in the line)."""
        if not self.enabled:
            return
        if self.json_out:
            self.write_line(
                access_line(
                    request_id, client, method, path, route, status, upstream, duration_us,
                    sent, reason, traceparent_line,
                )
            )  # fmt: skip
            return
        fields: dict[str, Any] = {
            "request_id": request_id,
            "client": client,
            "method": method,
            "path": path,
            "route": route,
            "status": status,
            "upstream": upstream,
            "duration_ms": duration_us / 1000,
            "bytes": sent,
        }
        if reason is not None:
            fields["reason"] = reason
        if traceparent_line is not None:
            fields["trace_id"] = trace_id_of(traceparent_line)
        self._log.info("access", **fields)

    def write_line(self, line: bytes) -> None:
        """A rendered JSON line (see access_line)."""
        self._buf.append(line)
        self._size += len(line) + 1
        if self._size > 64 * 1024:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            try:
                asyncio.get_running_loop().call_later(0.05, self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        self._flush_scheduled = False
        if not self._buf:
            return
        data = b"\n".join(self._buf) + b"\n"
        self._buf.clear()
        self._size = 0
        stream = self._stream or sys.stdout.buffer
        try:
            stream.write(data)
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed stdout must not take the data path down
