"""The README's orders feature, tested the way a feature is: the service.testing plugin's
`client` and `db`, no conftest, every test on a database of its own (README.md beside this)."""

import asyncio
import re
from datetime import UTC, datetime

import asyncpg
import pytest

ORDERS = "/api/v1/orders"
ORDER = {"reference": "A-1", "total": 999, "details": {"gift": True}}
UTC_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


async def create(client, **fields):
    answer = await client.post(ORDERS, json={**ORDER, **fields})
    assert answer.status_code == 201, answer.text
    return answer.json()


# -- creating and reading --------------------------------------------------------------------


async def test_created_order_is_answered_with_its_row(client):
    order = await create(client)
    assert {key: order[key] for key in ORDER} == ORDER
    assert order["id"] == 1
    assert UTC_TIME.fullmatch(order["created_at"])


async def test_created_order_is_in_the_database(client, db):
    order = await create(client)
    row = await db.fetchrow(
        "SELECT reference, total, details FROM orders WHERE id = $1", order["id"]
    )
    assert dict(row) == {"reference": "A-1", "total": 999, "details": {"gift": True}}


async def test_order_reads_back_the_same(client):
    order = await create(client)
    answer = await client.get(f"{ORDERS}/{order['id']}")
    assert (answer.status_code, answer.json()) == (200, order)


async def test_a_row_seeded_through_db_is_served(client, db):
    order_id = await db.fetchval(
        "INSERT INTO orders (reference, total, details) VALUES ('S-1', 5, $1) RETURNING id",
        {"seeded": [1, 2]},
    )
    answer = (await client.get(f"{ORDERS}/{order_id}")).json()
    assert (answer["reference"], answer["total"], answer["details"]) == (
        "S-1",
        5,
        {"seeded": [1, 2]},
    )


async def test_details_default_to_an_empty_object(client, db):
    order = await create(client, details={})
    answer = await client.post(ORDERS, json={"reference": "A-2", "total": 1})
    assert answer.json()["details"] == {} == order["details"]
    assert await db.fetchval("SELECT count(*) FROM orders WHERE details = '{}'") == 2


async def test_nested_details_are_stored_as_jsonb(client, db):
    details = {"lines": [{"sku": "X", "qty": 2}], "note": None, "rush": False}
    await create(client, details=details)
    assert await db.fetchval("SELECT details -> 'lines' -> 0 ->> 'sku' FROM orders") == "X"
    assert await db.fetchval("SELECT jsonb_typeof(details -> 'note') FROM orders") == "null"


async def test_a_zero_total_is_an_order(client):
    assert (await create(client, total=0))["total"] == 0


async def test_the_largest_bigint_total_is_kept(client, db):
    await create(client, total=2**63 - 1)
    assert await db.fetchval("SELECT total FROM orders") == 2**63 - 1


async def test_created_at_is_the_database_s_time_in_utc(client, db):
    before = await db.fetchval("SELECT now()")
    order = await create(client)
    created = datetime.fromisoformat(order["created_at"])
    assert created.tzinfo == UTC and created >= before
    assert await db.fetchval("SELECT created_at FROM orders") == created


# -- what the client gets wrong --------------------------------------------------------------


async def test_a_reference_seen_before_is_a_conflict_naming_the_constraint(client, db):
    await create(client)
    again = await client.post(ORDERS, json=ORDER)
    assert (again.status_code, again.json()) == (
        409,
        {"error": "unique_violation", "sqlstate": "23505", "constraint": "orders_reference_key"},
    )
    assert await db.fetchval("SELECT count(*) FROM orders") == 1


async def test_a_conflict_never_echoes_the_value(client, db):
    await db.execute("INSERT INTO orders (reference, total) VALUES ('secret-ref-77', 1)")
    again = await client.post(ORDERS, json={"reference": "secret-ref-77", "total": 1})
    assert again.status_code == 409 and "secret-ref-77" not in again.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"reference": "A-2", "total": -1}, "total"),
        ({"reference": "A-2", "total": "12"}, "total"),
        ({"reference": "A-2", "total": 1.5}, "total"),
        ({"reference": "", "total": 1}, "reference"),
        ({"reference": "x" * 65, "total": 1}, "reference"),
        ({"total": 1}, "reference"),
        ({"reference": "A-2"}, "total"),
        ({"reference": "A-2", "total": 1, "details": []}, "details"),
    ],
)
async def test_a_body_that_is_not_an_order_is_422_naming_the_field(client, db, body, field):
    answer = await client.post(ORDERS, json=body)
    assert answer.status_code == 422
    assert answer.json()["error"] == "invalid body"
    assert [f["field"] for f in answer.json()["fields"]] == [field]
    assert await db.fetchval("SELECT count(*) FROM orders") == 0


async def test_an_unknown_field_is_refused(client):
    answer = await client.post(ORDERS, json={**ORDER, "discount": 5})
    assert answer.status_code == 422


async def test_bytes_that_are_not_json_are_400(client):
    answer = await client.post(
        ORDERS, content=b'{"reference": ', headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 400


async def test_another_content_type_is_415(client):
    answer = await client.post(
        ORDERS, content=b"reference=A-1", headers={"Content-Type": "text/plain"}
    )
    assert answer.status_code == 415


async def test_a_body_over_the_limit_is_413_and_never_read(client, db):
    huge = {**ORDER, "details": {"blob": "x" * (1024 * 1024)}}
    answer = await client.post(ORDERS, json=huge)
    assert answer.status_code == 413
    assert await db.fetchval("SELECT count(*) FROM orders") == 0


async def test_a_nul_character_jsonb_refuses_is_400(client, db):
    answer = await client.post(ORDERS, json={**ORDER, "details": {"text": "a\u0000b"}})
    assert answer.status_code == 400
    assert await db.fetchval("SELECT count(*) FROM orders") == 0


async def test_a_total_past_bigint_is_400_without_the_value(client):
    answer = await client.post(ORDERS, json={**ORDER, "total": 2**63})
    assert (answer.status_code, answer.json()) == (
        400,
        {"error": "data_exception", "sqlstate": "22000"},
    )


# -- reading what is not there --------------------------------------------------------------


async def test_a_missing_order_is_404(client):
    answer = await client.get(f"{ORDERS}/1")
    assert (answer.status_code, answer.json()) == (404, {"error": "no such order"})


async def test_an_id_past_bigint_is_400(client):
    answer = await client.get(f"{ORDERS}/9223372036854775808")
    assert (answer.status_code, answer.json()) == (
        400,
        {"error": "data_exception", "sqlstate": "22000"},
    )


async def test_an_id_that_is_not_a_number_matches_no_route(client):
    assert (await client.get(f"{ORDERS}/first")).status_code == 404


async def test_listing_is_not_a_method_of_the_collection(client):
    assert (await client.get(ORDERS)).status_code == 405


# -- at once ---------------------------------------------------------------------------------


async def test_ten_orders_at_once_get_ten_rows_and_ids(client, db):
    answers = await asyncio.gather(
        *(client.post(ORDERS, json={"reference": f"B-{i}", "total": i}) for i in range(10))
    )
    assert sorted(a.json()["id"] for a in answers) == list(range(1, 11))
    assert await db.fetchval("SELECT sum(total) FROM orders") == sum(range(10))


async def test_the_same_reference_ten_times_at_once_makes_one_order(client, db):
    answers = await asyncio.gather(*(client.post(ORDERS, json=ORDER) for _ in range(10)))
    assert sorted(a.status_code for a in answers) == [201] + [409] * 9
    assert await db.fetchval("SELECT count(*) FROM orders") == 1


# -- each test on its own database -----------------------------------------------------------


@pytest.mark.parametrize("i", range(3))
async def test_each_test_sees_only_its_own_orders(client, db, i):
    assert await db.fetchval("SELECT count(*) FROM orders") == 0
    for n in range(i):
        await create(client, reference=f"own-{n}")
    await db.execute("INSERT INTO orders (reference, total) VALUES ('through-db', 1)")
    assert await db.fetchval("SELECT count(*) FROM orders") == i + 1
    assert await db.fetchval("SELECT max(id) FROM orders") == i + 1  # identities start at 1


@pytest.mark.parametrize("i", range(2))
async def test_a_schema_change_stays_in_its_test(db, i):
    assert (
        await db.fetchval(
            "SELECT count(*) FROM information_schema.columns"
            " WHERE table_name = 'orders' AND column_name = 'discount'"
        )
        == 0
    )
    await db.execute("ALTER TABLE orders ADD COLUMN discount bigint")


async def test_the_app_and_db_share_the_test_s_database(client, db, database_url):
    assert database_url.rsplit("/", 1)[1] == await db.fetchval("SELECT current_database()")
    ready = await client.get("/api/v1/ready")
    assert (ready.status_code, ready.json()["dependencies"]["db"]) == (200, "connected")


async def test_the_migration_is_recorded(db):
    applied = await db.fetch("SELECT migration_id FROM _yoyo_migration ORDER BY migration_id")
    assert "0002_add_orders" in [row["migration_id"] for row in applied]


async def test_db_enforces_what_the_table_declares(db):
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("INSERT INTO orders (reference, total) VALUES ('C-1', -5)")


async def test_db_reads_time_in_utc(db):
    assert await db.fetchval("SELECT current_setting('TimeZone')") == "UTC"
