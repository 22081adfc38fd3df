"""What every connection gets before anyone uses it: JSON values as Python objects.

Set once per physical connection, in the pool's per-connection set-up (never per acquire:
`set_type_codec` would clear the statement cache; for these built-in types it costs no
round trip). A dict, list, number, bool or None passed for a json/jsonb parameter is
encoded; a str is sent as it is, as JSON text already written (asyncpg's own behaviour:
pass `json.dumps("text")` for a JSON string). Values come back decoded: objects as dicts,
arrays as lists. A float NaN or infinity is written as null: JSON has no such numbers (and
jsonb refuses them).

Binary format, so `copy_records_to_table` works with json/jsonb columns too (a text codec
has no binary encoder for COPY). jsonb's binary form is a version byte, 1, then the text.
msgspec, chosen by measurement (docs/performance.md): the standard library's json took
about 800 µs on a 50-row jsonb read against 540 µs.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import msgspec

JSONB_VERSION = b"\x01"
_encode = msgspec.json.Encoder(decimal_format="number").encode
_decode = msgspec.json.Decoder().decode


def encode_json(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()  # already JSON text
    return _encode(value)


def decode_json(data: bytes) -> Any:
    try:
        return _decode(data)
    except msgspec.ValidationError:  # a number beyond a float's range (jsonb keeps numeric)
        return json.loads(data)


def encode_jsonb(value: Any) -> bytes:
    return JSONB_VERSION + encode_json(value)


def decode_jsonb(data: bytes) -> Any:
    return decode_json(data[1:])  # after the version byte


async def set_json_codecs(con: asyncpg.Connection) -> None:
    await con.set_type_codec(
        "json", encoder=encode_json, decoder=decode_json, schema="pg_catalog", format="binary"
    )
    await con.set_type_codec(
        "jsonb", encoder=encode_jsonb, decoder=decode_jsonb, schema="pg_catalog", format="binary"
    )
