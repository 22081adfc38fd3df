"""`python -m service serve | migrate …`: one line and exit 2 for an operator's mistake."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .migrations import cli as migrate_cli
from .settings import Settings, SettingsError

EXIT_USAGE = 2
DEFAULT_APP = "service.web.app:create_app"


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from .web.serve import serve

    return serve(settings, args.app)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the HTTP service (uvicorn, uvloop, httptools)")
    serve.add_argument(
        "--app",
        default=DEFAULT_APP,
        metavar="MODULE:FACTORY",
        help="the app factory to serve, e.g. myapp:app calling create_app(routes=...) "
        f"(default: {DEFAULT_APP})",
    )
    serve.set_defaults(run=_serve)
    migrate_cli.add_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        run: Callable[[Settings, argparse.Namespace], int] = args.run
        return run(settings, args)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
