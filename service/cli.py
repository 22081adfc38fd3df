"""`python -m service serve | migrate …`: one line and exit 2 for an operator's mistake."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import migrate_cli
from .settings import Settings, SettingsError

EXIT_USAGE = 2
DEFAULT_APP = "service.app:create_app"


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn
    from uvicorn.importer import ImportFromStringError, import_from_string

    from .http import BoundedHttpToolsProtocol
    from .logs import log_config
    from .tracing import check_installed

    check_installed(settings)
    try:
        import_from_string(args.app)  # a typo is one line here, not uvicorn's log and exit 1
    except ImportFromStringError as exc:
        raise SettingsError(f"--app {args.app}: {exc}") from None
    uvicorn.run(
        args.app,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http=BoundedHttpToolsProtocol,  # httptools, with the request head bounded
        log_config=log_config(settings.log_level, settings.log_format),
        access_log=settings.access_log,
        # Typed int, but uvicorn only passes it to asyncio.wait_for, which takes a float.
        timeout_graceful_shutdown=settings.shutdown_timeout,  # type: ignore[arg-type]
        lifespan="on",
        proxy_headers=False,
        server_header=False,
    )
    return 0


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
