"""GET /metrics: every family, per-app registries, pool figures from a real pool."""

from __future__ import annotations

import logging

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service import create_app
from service.db import Replicas
from service.settings import Settings
from service.web.metrics import Metrics
from service.web.middleware import RequestMiddleware
from tests.support.apps import running, started, test_settings
from tests.support.cluster import Cluster
from tests.support.polling import wait_until_async

UNREACHABLE = "postgresql://app@127.0.0.1:1/orders"


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from the app's /metrics."""
    response = await client.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_is_prometheus_text_and_not_cached(settings: Settings) -> None:
    app = create_app(settings)
    async with running(app) as client:
        await started(app)
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert response.headers["cache-control"] == "no-store"
    assert "# TYPE db_pool_size gauge" in response.text
    assert "# TYPE http_requests_total counter" in response.text


async def test_pool_gauges_come_from_the_live_pool(settings: Settings) -> None:
    app = create_app(test_settings(settings.database_url.value, pool_min_size=2, pool_max_size=7))
    async with running(app) as client:
        database = await started(app)
        async with database.connection(), database.connection():
            held = await scrape(client)
        after = await scrape(client)
    assert held[("db_pool_max", ())] == 7
    assert held[("db_pool_in_use", ())] == 2
    assert held[("db_pool_size", ())] >= 2
    assert held[("db_pool_idle", ())] == held[("db_pool_size", ())] - 2
    assert after[("db_pool_in_use", ())] == 0
    assert after[("db_pool_idle", ())] == after[("db_pool_size", ())]
    assert after[("db_connections_opened_total", ())] >= 2
    assert after[("db_connections_lost_total", ())] == 0


async def test_pool_gauges_are_zero_without_a_pool() -> None:
    app = create_app(test_settings(UNREACHABLE))
    async with running(app) as client:
        samples = await scrape(client)
    assert samples[("db_pool_size", ())] == 0
    assert samples[("db_pool_in_use", ())] == 0
    assert samples[("db_pool_max", ())] == 5
    assert samples[("db_up", ())] == 0


async def test_connections_the_service_closes_are_not_lost(settings: Settings) -> None:
    app = create_app(settings)
    async with running(app) as client:
        database = await started(app)
        assert database.stats().size > 0
        await database.expire_connections()
        async with database.connection():
            pass  # the expired connection is closed on its way back to the pool
        await wait_until_async(lambda: database.stats().closed >= 1, "a closed connection")
        samples = await scrape(client)
    assert samples[("db_connections_closed_total", ())] >= 1
    assert samples[("db_connections_lost_total", ())] == 0


@pytest.mark.fault
async def test_connections_lost_when_the_server_stops(owned_cluster: Cluster) -> None:
    app = create_app(test_settings(owned_cluster.url(), pool_min_size=2))
    async with running(app) as client:
        database = await started(app)
        await wait_until_async(lambda: database.stats().size >= 2, "two connections")
        owned_cluster.stop()
        await wait_until_async(lambda: database.stats().lost >= 2, "two lost connections")
        samples = await scrape(client)
    assert samples[("db_connections_lost_total", ())] >= 2
    assert samples[("db_connections_closed_total", ())] == 0


async def test_ready_checks_by_outcome_with_latency(settings: Settings) -> None:
    app = create_app(settings)
    async with running(app) as client:
        await started(app)
        for _ in range(3):
            assert (await client.get("/api/v1/ready")).status_code == 200
        samples = await scrape(client)
    assert samples[("db_ready_checks_total", (("outcome", "connected"),))] == 3
    assert samples[("db_ready_check_duration_seconds_count", ())] == 3
    assert samples[("db_ready_check_duration_seconds_bucket", (("le", "+Inf"),))] == 3
    assert samples[("db_up", ())] == 1


async def test_ready_check_failures_count_by_word() -> None:
    app = create_app(test_settings(UNREACHABLE))
    async with running(app) as client:
        assert (await client.get("/api/v1/ready")).status_code == 503
        samples = await scrape(client)
    outcomes = {
        dict(labels)["outcome"]: value
        for (name, labels), value in samples.items()
        if name == "db_ready_checks_total"
    }
    assert sum(outcomes.values()) == 1
    assert set(outcomes) <= {"connecting", "disconnected"}


async def _item(request: Request) -> JSONResponse:
    return JSONResponse({"id": request.path_params["item_id"]})


async def _boom(request: Request) -> JSONResponse:
    raise RuntimeError("handler bug")


async def test_http_requests_by_route_template_method_and_status() -> None:
    app = create_app(test_settings(UNREACHABLE))
    app.router.routes.append(Route("/items/{item_id}", _item, methods=["GET"]))
    app.router.routes.append(Route("/boom", _boom, methods=["GET"]))
    transport_errors = 0
    async with running(app) as client:
        for item_id in range(5):
            assert (await client.get(f"/items/{item_id}")).status_code == 200
        assert (await client.get("/no/such/path/42")).status_code == 404
        assert (await client.get("/no/such/path/43")).status_code == 404
        assert (await client.post("/api/v1/health")).status_code == 405
        assert (await client.request("BREW", "/api/v1/health")).status_code == 405
        try:
            assert (await client.get("/boom")).status_code == 500
        except RuntimeError:
            transport_errors += 1  # ASGITransport re-raises what the server logged
        samples = await scrape(client)

    def requests(route: str, method: str, status: str) -> float:
        labels = (("method", method), ("route", route), ("status", status))
        return samples.get(("http_requests_total", labels), 0)

    assert requests("/items/{item_id}", "GET", "200") == 5
    assert requests("unmatched", "GET", "404") == 2
    assert requests("/api/v1/health", "POST", "405") == 1
    assert requests("/api/v1/health", "other", "405") == 1
    assert requests("/boom", "GET", "500") == 1
    routes = {dict(labels)["route"] for (name, labels) in samples if name == "http_requests_total"}
    assert not any(route.startswith("/items/") and "{" not in route for route in routes)
    assert not any("/no/such" in route for route in routes)
    count = samples[
        ("http_request_duration_seconds_count", (("method", "GET"), ("route", "/items/{item_id}")))
    ]
    assert count == 5


async def test_each_app_has_its_own_registry() -> None:
    first = create_app(test_settings(UNREACHABLE))
    second = create_app(test_settings(UNREACHABLE))
    async with running(first) as client:
        await client.get("/api/v1/health")
        await client.get("/api/v1/health")
        first_samples = await scrape(client)
    async with running(second) as client:
        second_samples = await scrape(client)
    health = (("method", "GET"), ("route", "/api/v1/health"), ("status", "200"))
    assert first_samples[("http_requests_total", health)] == 2
    assert ("http_requests_total", health) not in second_samples


async def test_several_workers_are_announced_once(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(test_settings(UNREACHABLE, workers=4))
    with caplog.at_level(logging.WARNING, logger="service.app"):
        async with running(app):
            pass
    assert [r.getMessage() for r in caplog.records if "metrics.per_worker" in r.getMessage()] == [
        "metrics.per_worker workers=4: /metrics shows one worker"
    ]


async def test_non_http_scopes_pass_through_uncounted() -> None:
    seen: list[str] = []

    async def inner(scope, receive, send) -> None:
        seen.append(scope["type"])

    metrics = Metrics()
    await RequestMiddleware(inner, metrics)({"type": "lifespan"}, None, None)
    assert seen == ["lifespan"]
    assert metrics.http == {}


async def test_reads_meant_for_a_replica_are_counted_when_none_is_configured(
    settings: Settings,
) -> None:
    app = create_app(settings)
    async with running(app) as client:
        await started(app)
        reads: Replicas = app.state.lifespan_state["reads"]
        async with reads.connection() as con:
            await con.fetchval("SELECT 1")
        samples = await scrape(client)
    assert samples[("db_replica_fallbacks_total", (("reason", "not_configured"),))] == 1
    assert samples[("db_replica_fallbacks_total", (("reason", "lag"),))] == 0
    assert samples[("db_writes_refused_total", ())] == 0
    assert ("db_replica_up", ()) not in samples  # replica families only when one is set


async def test_transactions_are_counted_by_outcome_and_retries_by_sqlstate(
    settings: Settings,
) -> None:
    app = create_app(settings)
    async with running(app) as client:
        database = await started(app)
        assert await database.run_in_transaction(lambda con: con.fetchval("SELECT 1")) == 1
        samples = await scrape(client)
    assert samples[("db_transactions_total", (("outcome", "committed"),))] == 1
    assert samples[("db_transactions_total", (("outcome", "outcome_unknown"),))] == 0
    assert samples[("db_transaction_retries_total", (("sqlstate", "40001"),))] == 0
    assert samples[("db_transaction_retries_total", (("sqlstate", "40P01"),))] == 0
