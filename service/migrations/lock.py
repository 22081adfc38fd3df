"""The migration lock: a session advisory lock with a bounded wait that names its holder.

Held on the connection that runs the migrations, so it lives exactly as long as the
work: a killed runner's session ends (its backend notices within a second, see
`client_connection_check_interval`) and the lock goes with it. No row to break by hand.
yoyo's own lock row is also taken, in a transaction never committed, so plain `yoyo`
runners wait for ours, and a crash of ours leaves nothing behind.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psycopg
from psycopg import errors

from ..backoff import Backoff

# pg_advisory_lock(int, int): shows in pg_locks as classid/objid with objsubid = 2.
LOCK_KEY = (0x53564331, 1)  # "SVC1", migrations
HOLDER_QUERY = """
SELECT a.pid, a.application_name, host(a.client_addr), a.client_port, a.backend_start
FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s
  AND l.objsubid = 2
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"""
YOYO_ROW_INSERT = (
    "INSERT INTO yoyo_lock (locked, ctime, pid) VALUES (1, now() AT TIME ZONE 'UTC', %s)"
)
YOYO_ROW_HOLDER = "SELECT pid, ctime FROM yoyo_lock"
YOYO_ROW_POLL = 0.2
LOCK_POLL_FIRST = 0.05
LOCK_POLL_MAX = 0.5


class LockNotAcquired(Exception):
    """Another run holds the lock past the bounded wait; the message says who."""


def acquire(con: psycopg.Connection[Any], timeout: float) -> None:
    """Take the advisory lock for this session, waiting at most `timeout` s (0: no wait).

    Polls pg_try_advisory_lock rather than blocking in pg_advisory_lock: a blocked call
    is a running statement with a snapshot, and CREATE INDEX CONCURRENTLY in the holder's
    migration waits for every older snapshot: holder and waiter would deadlock.
    """
    polls = Backoff(LOCK_POLL_FIRST, LOCK_POLL_MAX, jitter=0.0, budget=timeout)
    while True:
        got = con.execute("SELECT pg_try_advisory_lock(%s, %s)", LOCK_KEY).fetchone()
        if got and got[0]:
            return
        pause = polls.next()
        if pause is None:
            raise LockNotAcquired(
                f"another migration run holds the lock ({holder(con)}); "
                f"gave up after MIGRATE_LOCK_TIMEOUT={timeout:g}s"
            )
        time.sleep(pause)


def holder(con: psycopg.Connection[Any]) -> str:
    """Who holds the lock: server pid, application_name, client address, since when."""
    row = con.execute(HOLDER_QUERY, LOCK_KEY).fetchone()
    if row is None:
        return "holder already gone"
    pid, app, addr, port, since = row
    client = f"{addr}:{port}" if addr else "local socket"
    started = f"{since:%Y-%m-%d %H:%M:%S %Z}"
    return f"pid {pid}, application_name {app or '?'!r}, client {client}, since {started}"


def hold_yoyo_row(guard: psycopg.Connection[Any], deadline: float) -> None:
    """Insert yoyo's lock row and leave the transaction open until `guard` closes.

    A committed row already there is a plain `yoyo` run in progress, or one that
    crashed (yoyo's row outlives its process): we wait for it until `deadline`.
    """
    # Idle in a transaction by design, for the whole run: a timeout the role or database
    # sets (ALTER ROLE … SET idle_in_transaction_session_timeout, as the service's docs
    # advise behind PgBouncer) must not end it, or plain yoyo runners could start meanwhile.
    guard.execute("SET idle_in_transaction_session_timeout = 0")
    while True:
        guard.execute("BEGIN")
        try:
            guard.execute(YOYO_ROW_INSERT, (os.getpid(),))
            return
        except errors.UniqueViolation:
            guard.execute("ROLLBACK")
        if time.monotonic() >= deadline:
            row = guard.execute(YOYO_ROW_HOLDER).fetchone()
            if row is not None:
                pid, ctime = row
                raise LockNotAcquired(
                    f"yoyo's lock row is held by process {pid} since {ctime:%Y-%m-%d %H:%M:%S} "
                    "UTC (a plain `yoyo apply` running, or one that crashed: then run "
                    "`yoyo break-lock`)"
                )
        time.sleep(YOYO_ROW_POLL)
