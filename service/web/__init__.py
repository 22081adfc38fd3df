"""The HTTP side: the Starlette app and everything a request passes through.

    app         create_app(settings=None, *, routes=()) and db_connection(request)
    middleware  one ASGI layer per request: HTTP metrics, the disconnect watch, 500s
    disconnect  the per-request watch that cancels a handler whose client left
    health      liveness and readiness
    metrics     Prometheus families read from each pool's stats()
    tracing     OpenTelemetry, opt-in ([otel] extra)
    http        bounded request heads for uvicorn's httptools protocol
    serve       `python -m service serve`: uvicorn owning the process

Depends on the database part and the migrations part, never the other way.
"""
