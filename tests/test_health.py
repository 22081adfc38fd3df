"""/api/v1/ready in the IETF health-check format when asked with Accept: application/health+json."""

from __future__ import annotations

from datetime import datetime

import pytest

from service import create_app
from service.db import DbState
from service.settings import Settings
from service.web.health import (
    READY_ANSWERS,
    READY_ANSWERS_WITH_REPLICA,
    health_json,
    wants_health_json,
)
from tests.support.apps import running, started, test_settings

HEALTH_JSON = {"accept": "application/health+json"}


async def test_pass_with_db_response_time(settings: Settings) -> None:
    app = create_app(settings)
    async with running(app) as client:
        await started(app)
        response = await client.get("/api/v1/ready", headers=HEALTH_JSON)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/health+json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["status"] == "pass"
    assert "output" not in body
    [check] = body["checks"]["db:responseTime"]
    assert check["status"] == "pass"
    assert check["componentType"] == "datastore"
    assert check["observedUnit"] == "ms"
    assert isinstance(check["observedValue"], int | float) and check["observedValue"] >= 0
    assert check["time"].endswith("Z")
    assert datetime.fromisoformat(check["time"]).tzinfo is not None


async def test_fail_is_503_with_the_readiness_word() -> None:
    app = create_app(test_settings("postgresql://app:pw@127.0.0.1:1/orders"))
    async with running(app) as client:
        response = await client.get("/api/v1/ready", headers=HEALTH_JSON)
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/health+json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["status"] == "fail"
    [check] = body["checks"]["db:responseTime"]
    assert check["status"] == "fail"
    assert check["output"] in {"connecting", "disconnected"}
    assert body["output"] == f"db: {check['output']}"
    assert "pw" not in response.text and "refused" not in response.text


async def test_default_stays_the_original_json(settings: Settings) -> None:
    app = create_app(settings)
    async with running(app) as client:
        await started(app)
        plain = await client.get("/api/v1/ready")
        anything = await client.get("/api/v1/ready", headers={"accept": "*/*"})
        app_json = await client.get("/api/v1/ready", headers={"accept": "application/json"})
    for response in (plain, anything, app_json):
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json()["ready"] is True


@pytest.mark.parametrize(
    ("accept", "wanted"),
    [
        ("application/health+json", True),
        ("Application/Health+JSON", True),
        ("application/json;q=0.5, application/health+json", True),
        ("application/health+json; q=0.9", True),
        ("application/health+json;q=0", False),
        ("application/json", False),
        ("*/*", False),
        ("", False),
    ],
)
def test_accept_header_negotiation(accept: str, wanted: bool) -> None:
    assert wants_health_json(accept) is wanted


def test_a_replica_is_its_own_word_and_never_fails_readiness() -> None:
    assert READY_ANSWERS[DbState.CONNECTED][1] == (
        b'{"ready":true,"dependencies":{"db":"connected","redis":"unknown"}}'
    )
    status, body, _ = READY_ANSWERS_WITH_REPLICA[DbState.CONNECTED, "disconnected"]
    assert (status, body) == (
        200,
        b'{"ready":true,"dependencies":{"db":"connected","db_replica":"disconnected",'
        b'"redis":"unknown"}}',
    )
    assert READY_ANSWERS_WITH_REPLICA[DbState.READ_ONLY, "connected"][0] == 503
    down = health_json(DbState.CONNECTED, 0.001, "lagging")
    assert down["status"] == "pass"
    assert down["checks"]["db_replica:status"] == [  # type: ignore[index]
        {"componentType": "datastore", "status": "warn", "output": "lagging"}
    ]
    assert "db_replica:status" not in health_json(DbState.CONNECTED, 0.001)["checks"]  # type: ignore[operator]


async def test_probes_answered_without_the_router_answer_as_the_routes_do(
    settings: Settings,
) -> None:
    """GET probes take the middleware's fast path; HEAD goes through the router to the same
    answer: both must say the same thing, and both are counted."""
    app = create_app(settings)
    async with running(app) as client:
        await started(app)
        for path in ("/api/v1/ready", "/api/v1/health"):
            fast = await client.get(path)
            routed = await client.head(path)
            assert fast.status_code == routed.status_code == 200
            assert fast.headers == routed.headers
            assert routed.content == b""
        metrics = (await client.get("/metrics")).text
    for method in ("GET", "HEAD"):
        for route in ("/api/v1/ready", "/api/v1/health"):
            sample = f'http_requests_total{{method="{method}",route="{route}",status="200"}} 1.0'
            assert sample in metrics
    assert 'db_ready_checks_total{outcome="connected"} 2.0' in metrics
