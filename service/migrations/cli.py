"""`python -m service migrate apply|rollback|list|new|accept`: one line per result or error."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg

from ..settings import DatabaseURL, Settings
from .connection import Target, describe
from .files import MigrationError, MigrationNameError
from .runner import Runner
from .safety import Timeouts
from .scaffold import new
from .status import status

EXIT_FAILED = 1
EXIT_USAGE = 2
# apply and rollback change a database: they need one named, never libpq's localhost:5432.
CHANGES = ("apply", "rollback")
LIBPQ_TARGET = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")


def add_command(commands: Any) -> None:
    """Register `migrate` on the top-level parser's subcommands."""
    migrate = commands.add_parser(
        "migrate",
        help="apply, roll back, list, create or accept SQL migrations (docs/migrations.md)",
        description="Plain-SQL migrations (yoyo underneath) under an advisory lock, with "
        "checksums of applied files. Reads DATABASE_URL and .env like the service.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--database", metavar="URL", help="overrides DATABASE_URL")
    common.add_argument(
        "--dir", type=Path, metavar="DIR", help="migrations folder (default: the shipped sql/)"
    )
    actions = migrate.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("apply", parents=[common], help="apply every pending migration")
    rollback = actions.add_parser(
        "rollback", parents=[common], help="roll back the newest migration"
    )
    target = rollback.add_mutually_exclusive_group()
    target.add_argument("--all", action="store_true", help="roll back every migration")
    target.add_argument("--to", metavar="REV", help="roll back every migration after REV")
    actions.add_parser("list", parents=[common], help="applied / pending / changed, one a line")
    new = actions.add_parser("new", parents=[common], help="create the next numbered pair")
    new.add_argument("name", help="lower-case words joined by _, e.g. add_users")
    accept = actions.add_parser(
        "accept",
        parents=[common],
        help="accept the edited content of applied migrations (records the new checksum)",
    )
    accept.add_argument("ids", nargs="+", metavar="MIGRATION", help="e.g. 0002_add_users")
    migrate.set_defaults(run=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run one migrate action; MigrationError becomes one line on stderr and exit 1."""
    if args.database:
        settings = replace(settings, database_url=DatabaseURL.parse(args.database, "--database"))
    url = settings.database_url
    if args.action in CHANGES:
        if url.value is None and not any(os.environ.get(var) for var in LIBPQ_TARGET):
            print(
                f"error: DATABASE_URL is not set: migrate {args.action} changes a database and "
                "never assumes localhost:5432 (set DATABASE_URL, --database, or run scripts/dev)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        print(f"target {url.redacted}", flush=True)  # before anything changes
    try:
        return _ACTIONS[args.action](settings, args)
    except MigrationNameError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MigrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except psycopg.Error as exc:  # the connection lost mid-run, a deadlock, a permission
        print(f"error: {url.redacted}: {describe(exc, url)}", file=sys.stderr)
        return EXIT_FAILED


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


_ACTIONS = {
    "apply": _apply,
    "rollback": _rollback,
    "list": _list,
    "new": _new,
    "accept": _accept,
}
