"""A minimal OTLP/HTTP collector for the bench: POST /v1/traces is answered 200 at once; the
bodies are kept and only decoded (with opentelemetry-proto) when GET /count asks how many spans
arrived, so that the collector takes as little CPU as possible from the core it shares.

    python bench/otlp_sink.py --port 4318
"""

from __future__ import annotations

from aiohttp import web
from procs import serve_helper


def build_app() -> web.Application:
    bodies: list[bytes] = []

    async def traces(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.Response(content_type="application/x-protobuf")

    async def count(_: web.Request) -> web.Response:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        spans = 0
        for body in bodies:
            export = ExportTraceServiceRequest.FromString(body)
            spans += sum(len(ss.spans) for rs in export.resource_spans for ss in rs.scope_spans)
        return web.json_response({"exports": len(bodies), "spans": spans})

    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/count", count)
    return app


def main() -> None:
    serve_helper(lambda _args: build_app(), __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
