"""Tracing, opt-in: spans for requests and queries against real PostgreSQL, no parameters."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service import cli, create_app, db_connection
from service.settings import Settings
from service.web import tracing
from tests.support.apps import running, started, test_settings

SECRET_ID = 424242


async def item(request: Request) -> JSONResponse:
    async with db_connection(request) as con:
        value = await con.fetchval("SELECT $1::int + 1", request.path_params["id"])
    return JSONResponse({"value": value})


class Collector:
    """An OTLP/HTTP traces endpoint on a free port: what the real exporter sends, decoded."""

    def __init__(self) -> None:
        received: list[bytes] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                if self.path == "/v1/traces":
                    received.append(self.rfile.read(length))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list[Any]:
        found = []
        for body in self.received:
            for resource in ExportTraceServiceRequest.FromString(body).resource_spans:
                for scope in resource.scope_spans:
                    found.extend(scope.spans)
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _attributes(span: Any) -> dict[str, str]:
    return {kv.key: str(kv.value) for kv in span.attributes}


async def test_spans_for_the_request_and_its_query_without_parameters(
    database_url: str,
) -> None:
    collector = Collector()
    try:
        settings = test_settings(database_url, otel_endpoint=collector.endpoint)
        app = create_app(settings, routes=[Route("/item/{id:int}", item)])
        async with running(app) as client:
            await started(app)
            assert (await client.get(f"/item/{SECRET_ID}")).json() == {"value": SECRET_ID + 1}
        spans = collector.spans()  # the lifespan's end flushed them, over HTTP
    finally:
        collector.close()
    names = [span.name for span in spans]
    assert "GET /item/{id:int}" in names
    query = next(s for s in spans if "SELECT $1::int + 1" in str(_attributes(s)))
    request_span = next(s for s in spans if s.name == "GET /item/{id:int}")
    assert query.parent_span_id == request_span.span_id
    assert 'string_value: "/item/{id:int}"' in _attributes(request_span)["http.route"]
    for span in spans:
        if span is not request_span:  # that one holds the URL the client sent
            assert str(SECRET_ID) not in str(_attributes(span)), span.name


async def test_off_by_default_adds_nothing(settings: Settings) -> None:
    assert Settings.from_env({}, env_file=None).otel_endpoint == ""
    app = create_app(settings)
    assert [m.cls.__name__ for m in app.user_middleware] == ["RequestMiddleware"]


def test_tracing_without_the_extra_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tracing, "EXTRA_MODULES", ("no_such_module_for_tracing",))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.chdir("/")  # no .env
    assert cli.main(["serve"]) == 2
    assert capsys.readouterr().err == f"error: {tracing.MISSING}\n"


def test_a_bad_endpoint_is_refused() -> None:
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4318'"):
        Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, env_file=None)
