"""Build hook: the request path is compiled to C with mypyc (pyproject.toml holds the metadata).

The modules below run for every request (parse, match, extract, authorize, forward, log,
count). mypyc compiles the same typed source the tests and `mypy --strict` check; nothing is
written twice. Compiled, a cached-token request costs about a third less CPU (`make bench`).

`GATEWAY_PURE_PYTHON=1` builds a pure-Python package instead (no C compiler needed; slower).
A build that should compile and cannot fails loudly rather than quietly shipping the slow path;
`gateway version` tells which one is installed.
"""

from __future__ import annotations

import importlib.util
import os

from setuptools import Extension, setup

NATIVE_MODULES = [
    "gateway/authenticate.py",
    "gateway/authn/cache.py",
    "gateway/authn/info.py",
    "gateway/authn/validator.py",
    "gateway/authz.py",
    "gateway/extract.py",
    "gateway/forward.py",
    "gateway/http/exchange.py",
    "gateway/http/framing.py",
    "gateway/http/head.py",
    "gateway/http/outgoing.py",
    "gateway/http/pool.py",
    "gateway/http/server.py",
    "gateway/http/tasks.py",
    "gateway/http/upstream.py",
    "gateway/http/wire.py",
    "gateway/logs.py",
    "gateway/metrics.py",
    "gateway/normalize.py",
    "gateway/otlp.py",
    "gateway/pipeline.py",
    "gateway/ratelimit/limiter.py",
    "gateway/ratelimit/policy.py",
    "gateway/routing.py",
    "gateway/runtime.py",
    "gateway/spans.py",
    "gateway/tracecontext.py",
    "gateway/upstream_headers.py",
]

# C of the project's own, for the few steps where even compiled Python makes too many objects
# (docs/ARCHITECTURE.md, "The fast path"). Each has a pure-Python twin that the tests hold it to
# and that runs when the module is not built (GATEWAY_PURE_PYTHON=1).
C_MODULES: list[tuple[str, str]] = [
    ("gateway._access", "gateway/_access.c"),
    ("gateway.http._scan", "gateway/http/_scan.c"),
    ("gateway._trace", "gateway/_trace.c"),
]
#: what they share (included by path from their own folder)
C_HEADERS: list[str] = ["gateway/_text.h"]

# What the compiled modules import, directly or through the modules they type-check against.
# mypyc must see their real types: a compiled class with a base it cannot see (prometheus_client's
# Collector, say) crashes at run time. tools/native_build.py installs them for isolated builds.
NEEDED_IMPORTS = [
    "aiohttp", "cryptography", "httptools", "jwt", "orjson", "prometheus_client", "pydantic",
    "redis", "structlog", "yaml",
]  # fmt: skip

# The project's mypy settings (pydantic plugin, strict) are `make lint`'s; the build only needs to
# type the compiled modules (errors elsewhere are lint's business). Untyped libraries (httptools,
# uvloop) are Any, which compiled code handles generically.
MYPYC_FLAGS = [
    "--config-file=",
    "--ignore-missing-imports",
    "--follow-imports=silent",
    "--python-version=3.11",
]


def ext_modules() -> list[object]:
    if os.environ.get("GATEWAY_PURE_PYTHON") == "1":
        return []
    missing = [name for name in NEEDED_IMPORTS if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(
            f"setup.py: compiling the request path needs {', '.join(missing)} importable in the "
            "build environment (pip install -r requirements.lock, then build with "
            "--no-build-isolation; or an isolated build, which installs them), "
            "or GATEWAY_PURE_PYTHON=1 for a pure-Python build"
        )
    from mypyc.build import mypycify  # a build requirement (pyproject.toml)

    own_c = [
        Extension(name, [source], depends=C_HEADERS, extra_compile_args=["-O2", "-Wall"])
        for name, source in C_MODULES
    ]
    return [*mypycify([*MYPYC_FLAGS, *NATIVE_MODULES], group_name="gateway._native"), *own_c]


setup(ext_modules=ext_modules())
