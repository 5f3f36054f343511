"""`shop` command: migrations, demo data, static asset fingerprints.

Configuration comes from the same SHOP_* variables as the app.
"""

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from shop import __version__

if TYPE_CHECKING:
    from shop.core.config import Settings


def _settings() -> "Settings":
    # Imported late so `shop --help` does not load pydantic and SQLAlchemy.
    from shop.core.config import get_settings

    return get_settings()


def _migrate(args: argparse.Namespace) -> int:
    from shop import migrations

    migrations.upgrade(_settings(), args.revision)
    print(f"database at revision {args.revision}")
    return 0


def _downgrade(args: argparse.Namespace) -> int:
    from shop import migrations

    migrations.downgrade(_settings(), args.revision)
    print(f"database downgraded to {args.revision}")
    return 0


def _current(_: argparse.Namespace) -> int:
    from shop import migrations

    migrations.current(_settings())
    return 0


def _seed(args: argparse.Namespace) -> int:
    from shop.core.db import tls_context
    from shop.seed import seed

    settings = _settings()
    result = asyncio.run(
        seed(
            settings.migration_url,
            users=args.users,
            orders=args.orders,
            products=args.products,
            pgbouncer=settings.pgbouncer,
            random_seed=args.random_seed,
            tls=tls_context(settings),
        )
    )
    if result.skipped:
        print("database already holds users or products; nothing seeded")
    else:
        print(
            f"seeded {result.users} users, {result.products} products, {result.orders} orders, "
            f"{result.order_items} order items in {result.seconds:.1f}s"
        )
    return 0


def _fingerprint(args: argparse.Namespace) -> int:
    from shop import assets

    if args.check:
        problems = assets.check(args.static_dir, args.source_dir)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    for logical, name in assets.write(args.static_dir, args.source_dir).items():
        print(f"{logical} -> {name}")
    return 0


def _positive(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shop", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    migrate = commands.add_parser("migrate", help="upgrade the schema (idempotent)")
    migrate.add_argument("--revision", default="head")
    migrate.set_defaults(func=_migrate)

    downgrade = commands.add_parser("downgrade", help="downgrade the schema to a revision")
    downgrade.add_argument("revision", help='a revision id, "-1", or "base"')
    downgrade.set_defaults(func=_downgrade)

    current = commands.add_parser("current", help="show the schema revision")
    current.set_defaults(func=_current)

    seed = commands.add_parser("seed", help="load demo data (skipped if data exists)")
    seed.add_argument("--users", type=_positive, default=10_000)
    seed.add_argument("--orders", type=_positive, default=100_000)
    seed.add_argument("--products", type=_positive, default=1_000)
    seed.add_argument("--random-seed", type=int, default=1)
    seed.set_defaults(func=_seed)

    fingerprint = commands.add_parser(
        "fingerprint", help="rename static assets after their content hash, write manifest.json"
    )
    fingerprint.add_argument("--static-dir", type=Path, default=Path("static"))
    fingerprint.add_argument("--source-dir", type=Path, default=Path("assets"))
    fingerprint.add_argument("--check", action="store_true", help="only report differences")
    fingerprint.set_defaults(func=_fingerprint)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
