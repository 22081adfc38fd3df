"""HTTP: liveness, readiness, errors as JSON, the request-scoped helper in a handler."""

from __future__ import annotations

import asyncio

import asyncpg
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service import create_app, db_connection
from service.settings import Settings
from tests.conftest import running, started, test_settings

READY = {"ready": True, "dependencies": {"db": "connected", "redis": "unknown"}}


async def test_ready_answers_the_original_body(settings: Settings) -> None:
    app = create_app(settings)
    async with running(app) as client:
        await started(app)
        response = await client.get("/api/v1/ready")
    assert response.status_code == 200
    assert response.json() == READY
    assert response.headers["cache-control"] == "no-store"


async def test_not_ready_is_503_with_one_word_and_no_exception_text() -> None:
    app = create_app(test_settings("postgresql://app:pw@127.0.0.1:1/orders"))
    async with running(app) as client:
        response = await client.get("/api/v1/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False
    assert body["dependencies"]["redis"] == "unknown"
    assert body["dependencies"]["db"] in {"connecting", "disconnected"}
    assert "Error" not in response.text and "refused" not in response.text
    assert response.headers["cache-control"] == "no-store"


async def test_health_never_touches_the_database() -> None:
    # Nothing listens on port 1: liveness must not care.
    app = create_app(test_settings("postgresql://app@127.0.0.1:1/orders"))
    async with running(app) as client:
        response = await client.get("/api/v1/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_unknown_paths_and_wrong_methods_are_json() -> None:
    app = create_app(test_settings("postgresql://app@127.0.0.1:1/orders"))
    async with running(app) as client:
        missing = await client.get("/api/v1/nope")
        wrong = await client.post("/api/v1/ready")
    assert missing.status_code == 404
    assert missing.json() == {"error": "Not Found"}
    assert wrong.status_code == 405
    assert wrong.json() == {"error": "Method Not Allowed"}
    assert set(wrong.headers["allow"].split(", ")) == {"GET", "HEAD"}


async def test_a_trailing_slash_is_not_redirected_to_the_host_header() -> None:
    app = create_app(test_settings("postgresql://app@127.0.0.1:1/orders"))
    async with running(app) as client:
        for path in ("/api/v1/ready/", "/api/v1/health/", "/metrics/"):
            response = await client.get(path, headers={"Host": "evil.example"})
            assert response.status_code == 404, path
            assert response.json() == {"error": "Not Found"}
            assert "location" not in response.headers


def _app_with_handlers(settings: Settings):  # noqa: ANN202
    app = create_app(settings)

    async def answer(request: Request) -> JSONResponse:
        async with db_connection(request) as con:
            value = await con.fetchval("SELECT $1::int * 2", int(request.query_params["n"]))
        return JSONResponse({"value": value})

    async def broken(request: Request) -> JSONResponse:
        async with db_connection(request) as con:
            await con.execute("SELECT * FROM no_such_table")
        return JSONResponse({})  # pragma: no cover - never reached

    async def hold(request: Request) -> JSONResponse:
        async with db_connection(request) as con:
            await con.execute("SELECT pg_sleep(0.5)")
        return JSONResponse({})

    app.router.routes.extend(
        [Route("/answer", answer), Route("/broken", broken), Route("/hold", hold)]
    )
    return app


async def test_handler_uses_the_helper_and_the_connection_comes_back(settings: Settings) -> None:
    app = _app_with_handlers(settings)
    async with running(app) as client:
        database = await started(app)
        response = await client.get("/answer", params={"n": 21})
        assert response.json() == {"value": 42}
        failed = await client.get("/broken")
        assert failed.status_code == 500
        assert failed.json() == {"error": "internal server error"}
        assert "no_such_table" not in failed.text
        assert database.pool is not None
        assert database.pool.get_idle_size() == database.pool.get_size()


async def test_no_free_connection_is_a_503_not_a_hang(database_url: str) -> None:
    settings = test_settings(database_url, pool_min_size=1, pool_max_size=1, acquire_timeout=0.1)
    app = _app_with_handlers(settings)
    async with running(app) as client:
        await started(app)
        holding = asyncio.create_task(client.get("/hold"))
        await asyncio.sleep(0.1)
        response = await client.get("/answer", params={"n": 1})
        assert (await holding).status_code == 200
    assert response.status_code == 503
    assert response.json() == {"error": "database unavailable", "db": "timeout"}
    assert response.headers["retry-after"] == "1"


async def test_full_lifecycle_opens_and_closes_every_connection(settings: Settings, server) -> None:  # noqa: ANN001
    app = _app_with_handlers(settings)
    async with running(app) as client:
        database = await started(app)
        assert (await client.get("/api/v1/ready")).status_code == 200
        results = await asyncio.gather(*(client.get("/answer", params={"n": i}) for i in range(20)))
        assert [r.json()["value"] for r in results] == [2 * i for i in range(20)]
        pool = database.pool
    assert pool is not None and pool.is_closing()
    dbname = settings.database_url.value.rsplit("/", 1)[1]  # type: ignore[union-attr]
    with server.admin() as admin:
        left = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (dbname, "service"),
        ).fetchone()
    assert left == (0,)


async def test_one_pool_per_app(database_url: str) -> None:
    first, second = create_app(test_settings(database_url)), create_app(test_settings(database_url))
    async with running(first), running(second):
        a, b = await started(first), await started(second)
        assert a.pool is not b.pool
        assert isinstance(a.pool, asyncpg.Pool)
