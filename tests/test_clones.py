"""ClonePool (service/testing/clones.py): clones of a template made ahead, handed out once,
dropped after; failures reach the test that waits; nothing of ours is left behind."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from service.testing.clones import ClonePool, ClonePoolError
from service.testing.polling import wait_until
from service.testing.servers import Server


@pytest.fixture
def template(server: Server) -> Iterator[str]:
    name = server.create_database()
    with psycopg.connect(server.url(name), autocommit=True) as con:
        con.execute("CREATE TABLE seeded (id int GENERATED ALWAYS AS IDENTITY, v text)")
        con.execute("INSERT INTO seeded (v) VALUES ('from the template')")
    yield name
    server.drop_database(name)


def ours(server: Server, pool: ClonePool) -> set[str]:
    with server.admin() as con:
        rows = con.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (pool.prefix,)
        ).fetchall()
    return {name for (name,) in rows}


@pytest.mark.parametrize("ahead", [0, 2])
def test_each_clone_is_new_and_has_the_template_and_goes_once_released(
    server: Server, template: str, ahead: int
) -> None:
    pool = ClonePool(server, template, ahead=ahead)
    try:
        names = [pool.acquire() for _ in range(3)]
        assert len(set(names)) == 3
        for name in names:
            with psycopg.connect(server.url(name), autocommit=True) as con:
                assert con.execute("SELECT v FROM seeded").fetchall() == [("from the template",)]
                con.execute("INSERT INTO seeded (v) VALUES ('a test''s own')")
        # A later clone never sees an earlier one's writes.
        with psycopg.connect(server.url(pool.acquire())) as con:
            assert con.execute("SELECT count(*), max(id) FROM seeded").fetchone() == (1, 1)
        for name in names:
            pool.release(name)
        wait_until(lambda: not set(names) & ours(server, pool), "the released clones' drop")
    finally:
        pool.close()
    assert ours(server, pool) == set()


def test_clones_are_made_ahead_of_the_tests_that_take_them(server: Server, template: str) -> None:
    pool = ClonePool(server, template, ahead=2)
    try:
        wait_until(lambda: len(ours(server, pool)) == 2, "two clones made ahead")
        taken = pool.acquire()
        # The one taken is replaced at once: two ready again, besides the one in use.
        wait_until(lambda: len(ours(server, pool) - {taken}) == 2, "a replacement")
    finally:
        pool.close()


def test_without_ahead_nothing_is_made_before_it_is_asked_for(
    server: Server, template: str
) -> None:
    pool = ClonePool(server, template, ahead=0)
    try:
        assert ours(server, pool) == set()
        name = pool.acquire()
        assert ours(server, pool) == {name}
        pool.release(name)
        assert ours(server, pool) == set()  # dropped on the test's own thread
    finally:
        pool.close()


def test_close_drops_a_clone_still_in_use_with_a_connection_open(
    server: Server, template: str
) -> None:
    pool = ClonePool(server, template, ahead=1)
    leaked = pool.acquire()
    with psycopg.connect(server.url(leaked)) as con:  # a pool a test forgot to close
        pool.close()
        assert ours(server, pool) == set()
        with pytest.raises(psycopg.OperationalError):
            con.execute("SELECT 1")


def test_close_without_drop_leaves_them_to_the_server_s_end(server: Server, template: str) -> None:
    pool = ClonePool(server, template, ahead=1)
    wait_until(lambda: ours(server, pool), "a clone made ahead")
    pool.close(drop=False)
    left = ours(server, pool)
    assert len(left) == 1
    with server.admin() as con:
        for name in left:
            con.execute(f'DROP DATABASE "{name}"')


def test_a_failure_to_make_clones_fails_the_test_that_waits(server: Server) -> None:
    pool = ClonePool(server, "svc_test_no_such_template", ahead=1, timeout=10)
    try:
        with pytest.raises(ClonePoolError) as failed:
            pool.acquire()
    finally:
        pool.close()
    assert str(failed.value).startswith("the pool of clones of svc_test_no_such_template failed: ")
    assert 'template database "svc_test_no_such_template" does not exist' in str(failed.value)


def test_names_carry_the_worker_so_sessions_on_one_server_never_mix(
    server: Server, template: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw7")
    first, second = (ClonePool(server, template, ahead=0) for _ in range(2))
    assert first.prefix.startswith("svc_test_gw7_") and second.prefix.startswith("svc_test_gw7_")
    assert first.prefix != second.prefix
    first.close()
    second.close()
