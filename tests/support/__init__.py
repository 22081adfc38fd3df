"""What the suite, scripts/bench, scripts/faults and scripts/dev share; no pytest in here.

The cluster control, the ladder, bounded waits and in-process apps ship in the package, for
features' tests too (service/testing/): `cluster`, `servers`, `polling` and `apps` here
re-export them. `process` runs `python -m service serve`, `migrations` drives the migrate
command in-process, `proxy` is a TCP proxy a test switches, `writes` a feature that writes,
`pgbouncer` a real PgBouncer. `coverage_gate` is the one pytest plugin here (scripts/test
loads it).
"""
