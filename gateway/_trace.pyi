# The C module gateway/_trace.c (not built when GATEWAY_PURE_PYTHON=1).

def new_traceparent(pool: bytes, slot: int, below: int, sample_all: bool, /) -> str | None:
    """The `traceparent` header line of a new trace from the 24 bytes of `pool`'s `slot`
    (gateway.tracecontext.new_traceparent_py's twin), or None: an id is all zeros, or an input
    is left to the twin."""

def encode_span(
    trace_id: bytes,
    span_id: str,
    parent: str | None,
    state: str,
    name: str,
    kind: int,
    start: int,
    end: int,
    attributes: dict[str, str | int],
    error: bool,
    remote: bool,
    /,
) -> bytes | None:
    """One OTLP Span message (gateway.otlp.encode_span_py's twin, byte for byte), or None for
    an input it leaves to that twin: a subclass or another type, an id that is not 16 hex
    digits, a str that is not UTF-8-encodable, a number out of range."""

def quiet_traceparent(
    headers: list[tuple[bytes, bytes]], pool: bytes, slot: int, below: bytes, /
) -> str | None:
    """The `traceparent` header line of a new trace that is not sampled (its trace-id's low 64
    bits are not below `below`, 8 big-endian bytes), for a request whose headers have no
    `traceparent` (gateway.tracecontext.quiet_traceparent_py's twin), or None:
    an incoming context, a sampled or invalid new trace, or an input left to the twin."""
