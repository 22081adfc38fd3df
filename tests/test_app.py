"""HTTP: liveness, readiness, errors as JSON, the request-scoped helper in a handler."""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import re
import sys
from pathlib import Path

import asyncpg
import psycopg
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from service import create_app, db_connection
from service.settings import Settings
from tests.support.apps import running, started, test_settings
from tests.support.polling import wait_until_async
from tests.support.readme import readme_block

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


def _app_with_handlers(settings: Settings) -> Starlette:
    async def answer(request: Request) -> JSONResponse:
        async with db_connection(request) as con:
            value = await con.fetchval("SELECT $1::int * 2", int(request.query_params["n"]))
        return JSONResponse({"value": value})

    async def broken(request: Request) -> JSONResponse:
        async with db_connection(request) as con:
            await con.execute("SELECT * FROM no_such_table")
        return JSONResponse({})  # pragma: no cover - never reached

    # /hold keeps its connection from `holding` until the test sets `release`.
    holding, release = asyncio.Event(), asyncio.Event()

    async def hold(request: Request) -> JSONResponse:
        async with db_connection(request) as con:
            await con.execute("SELECT 1")
            holding.set()
            await release.wait()
        return JSONResponse({})

    routes = [Route("/answer", answer), Route("/broken", broken), Route("/hold", hold)]
    app = create_app(settings, routes=routes)
    app.state.holding, app.state.release = holding, release
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
        stats = database.stats()
        assert stats.size > 0 and stats.idle == stats.size


async def test_no_free_connection_is_a_503_not_a_hang(database_url: str) -> None:
    settings = test_settings(database_url, pool_min_size=1, pool_max_size=1, acquire_timeout=0.1)
    app = _app_with_handlers(settings)
    async with running(app) as client:
        await started(app)
        holding = asyncio.create_task(client.get("/hold"))
        await app.state.holding.wait()  # the pool's only connection is lent out
        response = await client.get("/answer", params={"n": 1})
        app.state.release.set()
        assert (await holding).status_code == 200
    assert response.status_code == 503
    assert response.json() == {"error": "database unavailable", "db": "timeout"}
    assert response.headers["retry-after"] == "1"


async def test_full_lifecycle_opens_and_closes_every_connection(settings: Settings, server) -> None:
    app = _app_with_handlers(settings)
    async with running(app) as client:
        database = await started(app)
        assert (await client.get("/api/v1/ready")).status_code == 200
        results = await asyncio.gather(*(client.get("/answer", params={"n": i}) for i in range(20)))
        assert [r.json()["value"] for r in results] == [2 * i for i in range(20)]
        pool = database._pool
    assert pool is not None and pool.is_closing()
    dbname = settings.database_url.value.rsplit("/", 1)[1]  # type: ignore[union-attr]
    with server.admin() as admin:
        left = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (dbname, "service"),
        ).fetchone()
    assert left == (0,)


async def test_building_and_running_the_app_leave_the_process_as_it_was(
    settings: Settings,
) -> None:
    # The garbage collector's tuning belongs to the serve command (service/web/serve.py):
    # tests and other ASGI servers embed the app.
    before = (gc.get_threshold(), gc.get_freeze_count())
    app = create_app(settings)
    async with running(app) as client:
        await started(app)
        assert (await client.get("/api/v1/ready")).status_code == 200
        assert (gc.get_threshold(), gc.get_freeze_count()) == before
    assert (gc.get_threshold(), gc.get_freeze_count()) == before


async def test_one_pool_per_app(database_url: str) -> None:
    first, second = create_app(test_settings(database_url)), create_app(test_settings(database_url))
    async with running(first), running(second):
        a, b = await started(first), await started(second)
        assert a._pool is not b._pool
        assert isinstance(a._pool, asyncpg.Pool)


async def test_feature_routes_and_mounts_are_served_beside_the_built_in_ones(
    settings: Settings,
) -> None:
    async def hello(request: Request) -> JSONResponse:
        return JSONResponse({"hello": request.path_params["name"]})

    feature = Mount("/api/v1/signals", routes=[Route("/{name}", hello)])
    clash = Route("/api/v1/health", hello)  # a feature cannot shadow liveness
    app = create_app(settings, routes=[feature, clash])
    async with running(app) as client:
        await started(app)
        assert (await client.get("/api/v1/signals/x")).json() == {"hello": "x"}
        assert (await client.get("/api/v1/health")).json() == {"status": "ok"}
        assert (await client.get("/api/v1/ready")).status_code == 200


HANDLER = "## Using the database in a handler"


async def test_the_readmes_handler_example_runs_as_pasted(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    database_url = empty_database_url  # sql/ may hold a feature's `orders` already
    with psycopg.connect(database_url, autocommit=True) as con:
        con.execute(readme_block("sql", HANDLER))
    (tmp_path / "myapp.py").write_text(readme_block("python", HANDLER))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("DATABASE_URL", database_url)
    myapp = importlib.import_module("myapp")
    app = myapp.app()
    order = {"reference": "A-1", "total": 999, "details": {"gift": True}}
    async with running(app) as client:
        await started(app)
        created = await client.post("/api/v1/orders", json=order)
        assert created.status_code == 201
        body = created.json()
        assert {k: body[k] for k in order} == order
        assert body["id"] == 1
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", body["created_at"])
        assert (await client.get("/api/v1/orders/1")).json() == body
        again = await client.post("/api/v1/orders", json=order)
        assert (again.status_code, again.json()) == (
            409,
            {
                "error": "unique_violation",
                "sqlstate": "23505",
                "constraint": "orders_reference_key",
            },
        )
        negative = await client.post("/api/v1/orders", json={"reference": "A-2", "total": -1})
        assert (negative.status_code, negative.json()) == (
            422,
            {
                "error": "invalid body",
                "fields": [{"field": "total", "message": "Expected `int` >= 0"}],
            },
        )
        too_large = await client.get("/api/v1/orders/9223372036854775808")
        assert (too_large.status_code, too_large.json()) == (
            400,
            {"error": "data_exception", "sqlstate": "22000"},  # never the value itself
        )
        missing = await client.get("/api/v1/orders/2")
        assert (missing.status_code, missing.json()) == (404, {"error": "no such order"})
        assert (await client.get("/api/v1/ready")).status_code == 200
    sys.modules.pop("myapp", None)


# -- DB_HOLD_WARNING_MS: a connection held too long is told, once, with where -----------


def _held_app(settings: Settings, read_only: bool, released: asyncio.Event) -> Starlette:
    async def held(request: Request) -> JSONResponse:
        async with db_connection(request, read_only=read_only) as con:  # the acquire site
            value = await con.fetchval("SELECT $1::int", request.path_params["order_id"])
            await released.wait()
        return JSONResponse({"value": value})

    async def quick(request: Request) -> JSONResponse:
        async with db_connection(request) as con:
            return JSONResponse({"value": await con.fetchval("SELECT 1")})

    routes = [Route("/orders/{order_id:int}/held", held), Route("/quick", quick)]
    return create_app(settings, routes=routes)


def _acquire_site() -> str:
    lines = Path(__file__).read_text().splitlines()
    number = next(n for n, line in enumerate(lines, 1) if line.endswith("# the acquire site"))
    return f"tests/test_app.py:{number}"


@pytest.mark.parametrize("read_only", [False, True])
async def test_a_connection_held_too_long_is_warned_once_with_route_and_acquire_site(
    database_url: str, caplog: pytest.LogCaptureFixture, read_only: bool
) -> None:
    caplog.set_level(logging.WARNING, logger="service.db")
    released = asyncio.Event()
    app = _held_app(test_settings(database_url, hold_warning_ms=50), read_only, released)

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "held_too_long" in r.getMessage()]

    async with running(app) as client:
        await started(app)
        assert (await client.get("/quick")).status_code == 200  # released in time: no warning
        request = asyncio.create_task(client.get("/orders/424242/held"))
        await wait_until_async(warnings, "the warning, while the connection is still held")
        released.set()
        assert (await request).json() == {"value": 424242}
    assert warnings() == [
        f"db.held_too_long route=/orders/{{order_id:int}}/held acquired_at={_acquire_site()} "
        "over_ms=50"
    ]
    assert "424242" not in caplog.text  # never a parameter


async def test_off_by_default_and_then_no_caller_is_looked_up(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_stack_inspection(depth: int = 0) -> None:
        raise AssertionError("the caller was looked up with DB_HOLD_WARNING_MS off")

    monkeypatch.setattr("service.web.handlers._getframe", no_stack_inspection)
    released = asyncio.Event()
    released.set()
    app = _held_app(settings, False, released)
    async with running(app) as client:
        await started(app)
        assert (await client.get("/orders/7/held")).json() == {"value": 7}
    assert "held_too_long" not in caplog.text


async def test_the_readmes_settings_and_on_connect_example_runs_as_pasted(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    code = readme_block("python", "A factory that takes its `Settings`")
    (tmp_path / "setup_example.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)  # no .env here
    module = importlib.import_module("setup_example")
    given = module.app(settings)
    monkeypatch.setenv("DATABASE_URL", settings.database_url.value)
    from_env = module.app()  # Settings.from_env()
    for app in (given, from_env):
        async with running(app) as client:
            await started(app)
            answer = await client.get("/api/v1/lock-timeout")
            assert (answer.status_code, answer.json()) == (200, {"lock_timeout": "2s"})
