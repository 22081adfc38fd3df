"""The HTTP side: the Starlette app and everything a request passes through.

    app         create_app(settings=None, *, routes=(), on_connect=None); the lifespan
    handlers    what a feature's handler uses: db_connection, run_in_transaction,
                read_json, json_response
    bodies      request bodies in (bounded, typed), JSON out
    errors      errors as answers: a database error's SQLSTATE to an HTTP status, the 503s
    sqlstates   PostgreSQL's condition names for those SQLSTATEs
    middleware  one ASGI layer per request: HTTP metrics, the disconnect watch, 500s
    disconnect  the per-request watch that cancels a handler whose client left
    health      liveness and readiness
    metrics     Prometheus families read from each pool's stats()
    tracing     OpenTelemetry, opt-in ([otel] extra)
    http        bounded request heads for uvicorn's httptools protocol
    serve       `python -m service serve`: uvicorn owning the process

Depends on the database part and the migrations part, never the other way.
"""
