"""`python -m service migrate apply|rollback|list|check|new|accept|baseline`: a line each.

Exit status: 0 done; 1 the run failed (or, for `check`, the database is not up to date);
2 nothing was attempted: an operator's mistake, or the database cannot be reached (for
`check`, any error).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg

from ..password_file import VARIABLE as PASSWORD_FILE
from ..settings import DatabaseURL, Settings, SettingsError
from .connection import CannotConnect, Target, describe
from .files import MigrationError, MigrationUsageError
from .offline import apply_script
from .runner import Runner
from .safety import Timeouts
from .scaffold import new
from .status import status

EXIT_FAILED = 1  # a run failed; `check`: pending or changed migrations
EXIT_ERROR = 2  # nothing attempted: a mistake on the command line, the database unreachable
# apply and rollback change a database: they need one named, never libpq's localhost:5432.
CHANGES = ("apply", "rollback")
LIBPQ_TARGET = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")


def add_command(commands: Any) -> None:
    """Register `migrate` on the top-level parser's subcommands."""
    migrate = commands.add_parser(
        "migrate",
        help="apply, roll back, list, check, create, accept or baseline SQL migrations "
        "(docs/migrations.md)",
        description="Plain-SQL migrations (yoyo underneath) under an advisory lock, with "
        "checksums of applied files. Reads DATABASE_URL and .env like the service.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--database", metavar="URL", help="overrides DATABASE_URL")
    common.add_argument(
        "--dir", type=Path, metavar="DIR", help="migrations folder (default: the shipped sql/)"
    )
    actions = migrate.add_subparsers(dest="action", required=True, metavar="ACTION")
    apply = actions.add_parser("apply", parents=[common], help="apply every pending migration")
    apply.add_argument(
        "--sql",
        action="store_true",
        help="print the SQL apply would run (for psql -v ON_ERROR_STOP=1 -f), change nothing",
    )
    rollback = actions.add_parser(
        "rollback", parents=[common], help="roll back the newest migration"
    )
    target = rollback.add_mutually_exclusive_group()
    target.add_argument("--all", action="store_true", help="roll back every migration")
    target.add_argument("--to", metavar="REV", help="roll back every migration after REV")
    actions.add_parser("list", parents=[common], help="applied / pending / changed, one a line")
    actions.add_parser(
        "check",
        parents=[common],
        help="exit 0 if every migration is applied and unchanged, 1 if not (one line each), "
        "2 on an error; read-only",
    )
    new = actions.add_parser("new", parents=[common], help="create the next numbered pair")
    new.add_argument("name", help="lower-case words joined by _, e.g. add_users")
    accept = actions.add_parser(
        "accept",
        parents=[common],
        help="accept the edited content of applied migrations (records the new checksum)",
    )
    accept.add_argument("ids", nargs="+", metavar="MIGRATION", help="e.g. 0002_add_users")
    baseline = actions.add_parser(
        "baseline",
        parents=[common],
        help="adopt a database whose schema exists: record every migration up to ID as "
        "applied, running none",
    )
    baseline.add_argument("id", metavar="ID", help="the newest migration the schema has")
    migrate.set_defaults(run=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run one migrate action; an error becomes one line on stderr and exit 1 or 2."""
    if args.database:
        given = DatabaseURL.parse(args.database, "--database")
        if settings.password_file is not None and given.has_password:
            raise SettingsError(f"--database and {PASSWORD_FILE} both give a password: keep one")
        settings = replace(settings, database_url=given)
    url = settings.database_url
    if args.action in CHANGES:
        if url.value is None and not any(os.environ.get(var) for var in LIBPQ_TARGET):
            print(
                f"error: DATABASE_URL is not set: migrate {args.action} changes a database and "
                "never assumes localhost:5432 (set DATABASE_URL, --database, or run scripts/dev)",
                file=sys.stderr,
            )
            return EXIT_ERROR
        print(f"target {url.redacted}", flush=True)  # before anything changes
    failed = EXIT_ERROR if args.action == "check" else EXIT_FAILED  # check's 1 means "behind"
    try:
        return _ACTIONS[args.action](settings, args)
    except (MigrationUsageError, CannotConnect) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except MigrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return failed
    except psycopg.Error as exc:  # the connection lost mid-run, a deadlock, a permission
        print(f"error: {url.redacted}: {describe(exc, url)}", file=sys.stderr)
        return failed


def _say(line: str) -> None:
    print(line, flush=True)  # as each migration commits, so a later failure keeps the record


def _retrying(line: str) -> None:
    print(f"retry: {line}", file=sys.stderr, flush=True)


def _runner(settings: Settings, args: argparse.Namespace) -> Runner:
    return Runner(
        Target.from_settings(settings),
        args.dir,
        lock_timeout=settings.migrate_lock_timeout,
        timeouts=Timeouts.from_settings(settings),
        on_retry=_retrying,
    )


def _apply(settings: Settings, args: argparse.Namespace) -> int:
    if args.sql:
        target = Target.from_settings(settings)
        lines = apply_script(target, args.dir, Timeouts.from_settings(settings))
        print("\n".join(lines))
        return 0
    with _runner(settings, args) as runner:
        applied = runner.apply(report=_say)
    print(f"{len(applied)} applied" if applied else "nothing to apply")
    return 0


def _rollback(settings: Settings, args: argparse.Namespace) -> int:
    with _runner(settings, args) as runner:
        undone = runner.rollback(count=0 if args.all else 1, to=args.to, report=_say)
    print(f"{len(undone)} rolled back" if undone else "nothing to roll back")
    return 0


def _list(settings: Settings, args: argparse.Namespace) -> int:
    for line in status(Target.from_settings(settings), args.dir):
        print(f"{line.state:<8} {line.id}")
    return 0


def _check(settings: Settings, args: argparse.Namespace) -> int:
    lines = status(Target.from_settings(settings), args.dir)
    for line in lines:
        if line.state == "pending":
            print(f"pending  {line.id}")
        elif line.state == "changed":
            print(
                f"changed  {line.id} (edited after it was applied: restore it, or accept it: "
                f"python -m service migrate accept {line.id})"
            )
        elif line.state == "missing":
            print(f"missing  {line.id} (applied, but no file here: the database is ahead)")
    if any(line.state in ("pending", "changed") for line in lines):
        return EXIT_FAILED
    applied = sum(line.state == "applied" for line in lines)
    print(f"up to date: {applied} applied")
    return 0


def _new(settings: Settings, args: argparse.Namespace) -> int:
    for path in new(args.name, args.dir):
        print(f"created {path}")
    return 0


def _accept(settings: Settings, args: argparse.Namespace) -> int:
    with _runner(settings, args) as runner:
        accepted = runner.accept(args.ids)
    for migration_id in accepted:
        print(f"accepted {migration_id}")
    return 0


def _baseline(settings: Settings, args: argparse.Namespace) -> int:
    with _runner(settings, args) as runner:
        found = runner.alembic_versions()
        recorded = runner.baseline(args.id)
    if found is not None:
        versions = ", ".join(repr(version) for version in found) or "no revision"
        same = "the same revision" if found == [args.id] else f"not {args.id}: check the schema"
        print(
            f"found alembic_version {versions} ({same}); left as it is: see docs/migrations.md, "
            "Coming from Alembic"
        )
    for migration_id in recorded:
        print(f"recorded {migration_id}")
    print(f"{len(recorded)} recorded as applied, none run")
    return 0


_ACTIONS = {
    "apply": _apply,
    "rollback": _rollback,
    "list": _list,
    "check": _check,
    "new": _new,
    "accept": _accept,
    "baseline": _baseline,
}
