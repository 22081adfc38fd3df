"""The migration lock: a session advisory lock with a bounded wait that names its holder.

Held on the connection that runs the migrations, so it lives exactly as long as the
work: a killed runner's session ends (its backend notices within a second, see
`client_connection_check_interval`) and the lock goes with it. No row to break by hand.

Plain `yoyo` runners know nothing of it: they insert a row into `yoyo_lock`. So a second
connection, the guard, holds `yoyo_lock` in SHARE ROW EXCLUSIVE mode for the run, which
their INSERT (ROW EXCLUSIVE) waits for. A table lock needs no transaction id, and a READ
COMMITTED transaction that only locks holds no snapshot between statements: the guard sits
`idle in transaction` with `backend_xid` and `backend_xmin` both NULL, so VACUUM's horizon
moves on during the run (an uncommitted row, the earlier way, held a transaction id for
the whole run). PostgreSQL offers no lock a client can hold outside a transaction that
yoyo's INSERT would wait for, and a committed row outlives a killed runner: hence this.
"""

from __future__ import annotations

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
# The same lock, for a script run by psql (`apply --sql`): taken at once, or the script stops.
TRY_LOCK_OR_STOP = f"""DO $$
BEGIN
    IF NOT pg_try_advisory_lock({LOCK_KEY[0]}, {LOCK_KEY[1]}) THEN
        RAISE EXCEPTION 'another migration run holds the migration lock';
    END IF;
END $$"""
# READ COMMITTED whatever the database's default: a REPEATABLE READ transaction would keep
# the snapshot of its first SELECT until the run ends.
GUARD_BEGIN = "BEGIN ISOLATION LEVEL READ COMMITTED"
GUARD_LOCK = "LOCK TABLE yoyo_lock IN SHARE ROW EXCLUSIVE MODE"
YOYO_ROW_HOLDER = "SELECT pid, ctime FROM yoyo_lock"
YOYO_TABLE_HOLDERS = """
SELECT a.pid, a.application_name, a.state
FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.granted AND l.relation = to_regclass('yoyo_lock')
  AND a.pid <> pg_backend_pid()
ORDER BY a.pid"""
YOYO_ROW_POLL = 0.2
GUARD_LOCK_SLICE = 1.0  # seconds one LOCK TABLE attempt waits before the deadline is checked
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


def guard_settings(guard: psycopg.Connection[Any]) -> None:
    """Keep the server from ending the guard's long idle transaction halfway through a run."""
    guard.execute("SET idle_in_transaction_session_timeout = 0")
    if guard.info.server_version >= 170000:
        guard.execute("SET transaction_timeout = 0")


def hold_yoyo_table(guard: psycopg.Connection[Any], deadline: float) -> None:
    """Lock `yoyo_lock` against plain `yoyo` runners, and leave it locked until `guard` closes.

    A committed row already there is a plain `yoyo` run in progress, or one that
    crashed (yoyo's row outlives its process): we wait for it until `deadline`.
    """
    guard_settings(guard)
    while True:
        guard.execute(GUARD_BEGIN)
        slice_ = min(max(deadline - time.monotonic(), 0.001), GUARD_LOCK_SLICE)
        guard.execute(f"SET LOCAL lock_timeout = '{round(slice_ * 1000)}ms'")
        try:
            guard.execute(GUARD_LOCK)
            row = guard.execute(YOYO_ROW_HOLDER).fetchone()
        except errors.LockNotAvailable:
            guard.execute("ROLLBACK")
            if time.monotonic() >= deadline:
                raise LockNotAcquired(
                    f"yoyo_lock is locked by {_table_holders(guard)}; "
                    "gave up after MIGRATE_LOCK_TIMEOUT"
                ) from None
            continue
        if row is None:
            return
        guard.execute("ROLLBACK")
        if time.monotonic() >= deadline:
            pid, ctime = row
            raise LockNotAcquired(
                f"yoyo's lock row is held by process {pid} since {ctime:%Y-%m-%d %H:%M:%S} "
                "UTC (a plain `yoyo apply` running, or one that crashed: then run "
                "`yoyo break-lock`)"
            )
        time.sleep(YOYO_ROW_POLL)


def _table_holders(guard: psycopg.Connection[Any]) -> str:
    rows = guard.execute(YOYO_TABLE_HOLDERS).fetchall()
    if not rows:
        return "a session already gone"
    return ", ".join(
        f"pid {pid} (application_name {app or '?'!r}, {state or 'state unknown'})"
        for pid, app, state in rows
    )
