"""What every connection gets before anyone uses it: JSON values as Python objects.

Set once per physical connection, in the pool's per-connection set-up (never per acquire:
`set_type_codec` costs a query and clears the statement cache). A dict, list, number, bool
or None passed for a json/jsonb parameter is encoded; a str is sent as it is, as JSON text
already written (asyncpg's own behaviour: pass `json.dumps("text")` for a JSON string).
Values come back decoded: objects as dicts, arrays as lists. A float NaN or infinity is
written as null: JSON has no such numbers (and jsonb refuses them).

msgspec, chosen by measurement (docs/performance.md): the standard library's json took
twice its time on a 50-row jsonb read (798 µs against 538 µs per query).
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import msgspec

JSON_TYPES = ("json", "jsonb")
_encode = msgspec.json.Encoder(decimal_format="number").encode
_decode = msgspec.json.Decoder().decode


def encode_json(value: Any) -> str:
    if isinstance(value, str):
        return value  # already JSON text
    return _encode(value).decode()


def decode_json(text: str) -> Any:
    try:
        return _decode(text)
    except msgspec.ValidationError:  # a number beyond a float's range (jsonb keeps numeric)
        return json.loads(text)


async def set_json_codecs(con: asyncpg.Connection) -> None:
    for name in JSON_TYPES:
        await con.set_type_codec(
            name, encoder=encode_json, decoder=decode_json, schema="pg_catalog", format="text"
        )
