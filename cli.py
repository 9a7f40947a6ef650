"""The `flatlay` command: a thin front door.

Each subcommand imports its wing (service, workers, models) only when it runs, so
`flatlay serve` never pays for torch and `flatlay synth` never pays for FastAPI.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def _cmd_serve(args: argparse.Namespace) -> int:
    from service.runner import serve

    return serve(host=args.host, port=args.port, data_dir=args.data_dir, worker=not args.no_worker)


def _cmd_api(args: argparse.Namespace) -> int:
    from service.runner import serve

    return serve(host=args.host, port=args.port, data_dir=args.data_dir, worker=False)


def _cmd_worker(args: argparse.Namespace) -> int:
    from workers.runner import run_worker

    return run_worker(data_dir=args.data_dir, concurrency=args.concurrency, queues=args.queues)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from service.settings import get_settings
    from service.store import migrate

    settings = get_settings(data_dir=args.data_dir)
    migrate(settings.resolved_database_url)
    print(f"job store at head: {settings.redacted_database_url}")
    return 0


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where jobs, blobs and the embedded queue live (default: $FLATLAY_DATA_DIR or "
        "./flatlay-data)",
    )


def _add_service_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the API and a worker process (embedded default)")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.add_argument("--no-worker", action="store_true", help="start the API alone")
    _add_data_dir(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("api", help="run the API alone (distributed mode)")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    _add_data_dir(p)
    p.set_defaults(func=_cmd_api)

    p = sub.add_parser("worker", help="run a Celery worker alone (distributed mode)")
    p.add_argument("--concurrency", type=int, default=1, help="jobs at once (one per device)")
    p.add_argument("--queues", default=None, help="comma-separated queues (default: the GPU queue)")
    _add_data_dir(p)
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("migrate", help="bring the job store schema to the newest migration")
    _add_data_dir(p)
    p.set_defaults(func=_cmd_migrate)


# Each wing adds its subcommands here; the registration functions themselves import nothing heavy.
_REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [_add_service_commands]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flatlay", description="Garment photos in, standardized flat-lay images out."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for register in _REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"flatlay {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
