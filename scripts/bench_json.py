"""scripts/bench's JSON section: the choices behind service/db/codecs.py and web/bodies.py.

In-process, on the bench's database, variants interleaved in shuffled blocks (a burst of
load from elsewhere hits every variant alike), medians:
- jsonb codecs set in the pool's per-connection set-up: none (values as str), the standard
  library (text), orjson (binary) and ours (msgspec, binary), on a 1-row read, a 50-row read
  and an INSERT with a dict;
- decoding and validating a small POST body: msgspec Struct against pydantic v2;
- writing 50 Records as JSON: the standard library, orjson, json_response (msgspec).
"""

from __future__ import annotations

import json
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Annotated, Any

import asyncpg
import msgspec

from service.db.codecs import set_json_codecs
from service.web.bodies import json_response

SETUP = """
DROP TABLE IF EXISTS docs;
CREATE TABLE docs (id int PRIMARY KEY, doc jsonb NOT NULL);
INSERT INTO docs SELECT i, jsonb_build_object('name', 'item ' || i, 'n', i, 'ok', true,
    'tags', jsonb_build_array('a', 'b', i), 'nested', jsonb_build_object('k', i, 'v', 'x'),
    'price', 12.5, 'ref', md5(i::text), 'when', now(), 'none', null, 'z', 'Zoë ☃')
FROM generate_series(1, 1000) AS i;
DROP TABLE IF EXISTS ins;
CREATE TABLE ins (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, doc jsonb NOT NULL);
"""
DOC = {"name": "widget", "n": 7, "ok": True, "tags": ["a", "b", 3], "nested": {"k": 1}}
BODY = (
    b'{"name": "Zoe\'s rent", "amount": 1250, "kind": "debit",'
    b' "account_id": "6f1c2b8e-3a64-4a57-9d2e-2f0b1f3c9a11", "metadata": {"ref": "INV-42"}}'
)


async def _stdlib(con: asyncpg.Connection) -> None:
    await con.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog", format="text"
    )


async def _orjson(con: asyncpg.Connection) -> None:
    import orjson

    await con.set_type_codec(
        "jsonb",
        encoder=lambda v: b"\x01" + orjson.dumps(v),
        decoder=lambda b: orjson.loads(b[1:]),
        schema="pg_catalog",
        format="binary",
    )


CODECS: dict[str, Callable[[asyncpg.Connection], Awaitable[None]] | None] = {
    "none (str)": None,
    "standard library, text": _stdlib,
    "orjson, binary": _orjson,
    "msgspec, binary (ours)": set_json_codecs,
}
QUERIES = {
    "1-row jsonb read": lambda con, i: con.fetchval("SELECT doc FROM docs WHERE id = $1", i),
    "50-row jsonb read": lambda con, i: con.fetch(
        "SELECT doc FROM docs WHERE id > $1 ORDER BY id LIMIT 50", i % 900
    ),
    "INSERT with a dict": lambda con, i: con.execute(
        "INSERT INTO ins (doc) VALUES ($1)", DOC if i >= 0 else json.dumps(DOC)
    ),
}


async def codecs(url: str, rounds: int = 20, block: int = 100) -> dict[tuple[str, str], float]:
    """µs per query, by (codec, query): medians of blocks interleaved in a shuffled order."""
    con = await asyncpg.connect(url)
    await con.execute(SETUP)
    await con.close()
    pools = {
        name: await asyncpg.create_pool(url, min_size=1, max_size=1, init=init)
        for name, init in CODECS.items()
    }
    blocks: dict[tuple[str, str], list[float]] = {}
    order = random.Random(3)
    try:
        for _ in range(rounds):
            pairs = [(c, q) for c in CODECS for q in QUERIES]
            order.shuffle(pairs)
            for codec, query in pairs:
                run = QUERIES[query]
                async with pools[codec].acquire() as con:
                    if codec == "none (str)" and query == "INSERT with a dict":
                        arg = -1  # no codec: the dict has to be written by hand
                    else:
                        arg = 1
                    started = time.perf_counter()
                    for i in range(block):
                        await run(con, (i % 999 + 1) * arg)
                    per = (time.perf_counter() - started) / block * 1e6
                blocks.setdefault((codec, query), []).append(per)
    finally:
        for pool in pools.values():
            await pool.close()
    return {key: statistics.median(values) for key, values in blocks.items()}


class PaymentIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    amount: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
    kind: str
    account_id: uuid.UUID
    metadata: dict[str, Any] | None = None


def validation(repeat: int = 20_000) -> dict[str, float]:
    """µs to decode and validate BODY: msgspec against pydantic v2 (lax and strict)."""
    from pydantic import BaseModel, ConfigDict, Field

    class Lax(BaseModel):
        model_config = ConfigDict(extra="forbid")
        name: str = Field(min_length=1, max_length=100)
        amount: int = Field(ge=1, le=1_000_000)
        kind: str
        account_id: uuid.UUID
        metadata: dict[str, Any] | None = None

    class Strict(Lax):
        model_config = ConfigDict(extra="forbid", strict=True)

    decoder = msgspec.json.Decoder(PaymentIn)
    variants: dict[str, Callable[[], object]] = {
        "msgspec Struct": lambda: decoder.decode(BODY),
        "pydantic v2, lax": lambda: Lax.model_validate_json(BODY),
        "pydantic v2, strict": lambda: Strict.model_validate_json(BODY),
        "standard library json.loads, no validation": lambda: json.loads(BODY),
    }
    return {name: _per_call(call, repeat) for name, call in variants.items()}


async def responses(url: str, repeat: int = 500) -> dict[str, float]:
    """µs to write 50 Records (bigint, text, timestamptz, numeric, uuid, jsonb) as JSON."""
    import orjson

    con = await asyncpg.connect(url)
    await set_json_codecs(con)
    rows = await con.fetch(
        "SELECT i::bigint AS id, 'item ' || i AS name, now() AS created_at,"
        " (i * 1.25)::numeric(10, 2) AS amount, md5(i::text)::uuid AS uid,"
        " jsonb_build_object('k', i, 'tags', jsonb_build_array('a', 'b')) AS doc"
        " FROM generate_series(1, 50) AS i"
    )
    await con.close()

    def default(value: Any) -> Any:
        if isinstance(value, Decimal | uuid.UUID):
            return str(value)
        if hasattr(value, "isoformat"):
            return value.isoformat()
        raise TypeError(type(value).__name__)

    variants: dict[str, Callable[[], object]] = {
        "standard library, default= hook": lambda: json.dumps(
            [dict(r) for r in rows], default=default
        ).encode(),
        "orjson, default= hook": lambda: orjson.dumps([dict(r) for r in rows], default=default),
        "json_response (msgspec)": lambda: json_response(rows).body,
    }
    return {name: _per_call(call, repeat) for name, call in variants.items()}


def _per_call(call: Callable[[], object], repeat: int) -> float:
    """Median µs per call over 7 timed batches of `repeat` (after one warm-up)."""
    call()
    timings = []
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(repeat):
            call()
        timings.append((time.perf_counter() - started) / repeat * 1e6)
    return statistics.median(timings)
