"""`python -m service serve | migrate …`: one line and exit 2 for an operator's mistake."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import migrate_cli
from .settings import Settings, SettingsError

EXIT_USAGE = 2


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from .http import BoundedHttpToolsProtocol
    from .logs import log_config

    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http=BoundedHttpToolsProtocol,  # httptools, with the request head bounded
        log_config=log_config(settings.log_level, settings.log_format),
        access_log=settings.access_log,
        timeout_graceful_shutdown=settings.shutdown_timeout,  # uvicorn's wait_for takes a float
        lifespan="on",
        proxy_headers=False,
        server_header=False,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the HTTP service (uvicorn, uvloop, httptools)")
    serve.set_defaults(run=_serve)
    migrate_cli.add_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        return args.run(settings, args)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
