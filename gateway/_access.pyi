# The C module gateway/_access.c (not built when GATEWAY_PURE_PYTHON=1).

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
    trace_id: str | None = None,
    /,
) -> bytes | None:
    """The JSON access line (gateway.logs.access_line_py's twin, byte for byte), or None for
    an input it leaves to that twin: a str that is not UTF-8-encodable, a str or int subclass,
    an int outside int64."""
