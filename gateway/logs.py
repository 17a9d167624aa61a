"""Logging: structlog for events, a cheap buffered JSON writer for access lines.

JSON when stderr is not a TTY (or `log.format: json`), human-readable console output otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import IO, Any, Final, TextIO

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

    def write(self, fields: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if not self.json_out:
            self._log.info("access", **{k: v for k, v in fields.items() if k != "event"})
            return
        line = orjson.dumps(fields)
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
