"""OpenTelemetry, opt-in: spans for HTTP requests and queries, never query parameters.

Off unless OTEL_EXPORTER_OTLP_ENDPOINT is set; then the `[otel]` extra must be installed
(`pip install 'service[otel]'`). When off, nothing here is imported and no middleware or
patch is added: the request path is exactly the one without tracing.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..settings import Settings, SettingsError
from .middleware import route_template

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

EXTRA_MODULES = (
    "opentelemetry.sdk.trace",
    "opentelemetry.instrumentation.asgi",
    "opentelemetry.instrumentation.asyncpg",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
)
MISSING = (
    "OTEL_EXPORTER_OTLP_ENDPOINT: tracing is on, but the [otel] extra is not installed "
    "(pip install 'service[otel]')"
)


def _otlp_exporter(endpoint: str) -> SpanExporter:
    """OTLP over HTTP to OTEL_EXPORTER_OTLP_ENDPOINT as the settings read it (`.env` too).

    The exporter reads the other OTEL_EXPORTER_OTLP_* variables itself, as every SDK does;
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, when set, names the full traces URL instead.
    """
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return OTLPSpanExporter()
    return OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")


def check_installed(settings: Settings) -> None:
    """Refuse, in one line, tracing asked for without the extra (the serve command)."""
    if not settings.otel_endpoint:
        return
    try:
        for module in EXTRA_MODULES:
            importlib.import_module(module)
    except ImportError:
        raise SettingsError(MISSING) from None


class RouteName:
    """Pure ASGI, inside the tracing middleware: name the request's span by route template.

    The span starts before routing, named by the raw path (`GET /item/42`, one name per id);
    once the router has matched, the template is known (`GET /item/{id:int}`).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from opentelemetry import trace

        span = trace.get_current_span()

        async def name_then_send(message: Message) -> None:
            # Before the answer starts: the span may end with the answer's last byte.
            route = route_template(scope)
            if message["type"] == "http.response.start" and route is not None:
                span.update_name(f"{scope['method']} {route}")
                span.set_attribute("http.route", route)
            await send(message)

        await self.app(scope, receive, name_then_send)


class Tracing:
    """The tracer provider, the ASGI middleware's arguments and the asyncpg patch."""

    def __init__(self, settings: Settings) -> None:
        check_installed(settings)
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        name = os.environ.get("OTEL_SERVICE_NAME", "service")
        self.provider: TracerProvider = TracerProvider(
            resource=Resource.create({SERVICE_NAME: name})
        )
        self.provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(settings.otel_endpoint)))
        self.middleware: Any = OpenTelemetryMiddleware
        # One span per request, not three: no spans for each ASGI receive and send.
        self.options: dict[str, Any] = {
            "tracer_provider": self.provider,
            "exclude_spans": ["receive", "send"],
        }

    def start(self) -> None:
        """Patch asyncpg (process-wide) for query spans: statement text, no parameters."""
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        instrumentor = AsyncPGInstrumentor(capture_parameters=False)  # type: ignore[no-untyped-call]
        instrumentor.instrument(tracer_provider=self.provider)

    def stop(self) -> None:
        """Undo the patch and flush what is buffered."""
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
        self.provider.shutdown()
