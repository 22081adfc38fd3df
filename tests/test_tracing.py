"""Tracing, opt-in: spans for requests and queries against real PostgreSQL, no parameters."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service import cli, create_app, db_connection, tracing
from service.settings import Settings
from tests.support.apps import running, started, test_settings

SECRET_ID = 424242


async def item(request: Request) -> JSONResponse:
    async with db_connection(request) as con:
        value = await con.fetchval("SELECT $1::int + 1", request.path_params["id"])
    return JSONResponse({"value": value})


async def test_spans_for_the_request_and_its_query_without_parameters(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = InMemorySpanExporter()
    monkeypatch.setattr(tracing, "make_exporter", lambda endpoint: exporter)
    settings = test_settings(database_url, otel_endpoint="http://127.0.0.1:4318")
    app = create_app(settings, routes=[Route("/item/{id:int}", item)])
    async with running(app) as client:
        await started(app)
        assert (await client.get(f"/item/{SECRET_ID}")).json() == {"value": SECRET_ID + 1}
    spans = exporter.get_finished_spans()  # the lifespan's end flushed them
    names = [span.name for span in spans]
    assert "GET /item/{id:int}" in names
    query = next(s for s in spans if "SELECT $1::int + 1" in str(s.attributes))
    request_span = next(s for s in spans if s.name == "GET /item/{id:int}")
    assert query.parent is not None and query.parent.span_id == request_span.context.span_id
    assert request_span.attributes is not None
    assert request_span.attributes["http.route"] == "/item/{id:int}"
    for span in spans:
        if span is not request_span:  # that one holds the URL the client sent
            assert str(SECRET_ID) not in str(span.attributes), span.name


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
