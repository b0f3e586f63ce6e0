"""The `dakd` command line.

Each module in this package is one subcommand: it defines NAME, HELP, `add_arguments(parser)` and
`run(args) -> int`. Modules are discovered, so adding a command is adding a file.
A DakdError is printed as `dakd <command>: error: <message>` and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from dakd_core.errors import DakdError


def _commands():
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        yield importlib.import_module(f"{__name__}.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dakd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in _commands():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except DakdError as e:
        print(f"dakd {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # python -m dakd_core.cli
    sys.exit(main())
