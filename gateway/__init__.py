"""OAuth 2.0 bearer-token gateway."""

__version__ = "0.1.0"


def build_kind() -> str:
    """`compiled` when the request path runs as mypyc-built extensions (setup.py), else
    `pure-python` (a `GATEWAY_PURE_PYTHON=1` build: same behaviour, more CPU per request)."""
    from gateway.http import server

    return "compiled" if (server.__file__ or "").endswith((".so", ".pyd")) else "pure-python"
