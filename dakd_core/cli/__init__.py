"""The `dakd` command line.

Each module in this package is one subcommand: it defines NAME, HELP, `add_arguments(parser)` and
`run(args) -> int`. Modules are discovered, so adding a command is adding a file.
Every refusal is one line on stderr, `dakd <command>: error: <message>` naming the flag or field and
its value, and exit status 2: a DakdError, a pydantic validation failure (on construction or on
assignment) and a bad flag alike (argparse's usage block is left out: `--help` has it).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from dakd_core.errors import DakdError, Preempted


def _commands():
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        yield importlib.import_module(f"{__name__}.{info.name}")


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error of every other refusal (subcommand parsers inherit it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given the command line, only the chosen command gets its flags.

    A command's flags come from its config model (pydantic, cv2 for synth...): building all of
    them for `dakd --help` cost more than the whole help needs (issue 14: help under 1 s).
    Without `argv` every command is complete."""
    chosen = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    parser = _Parser(prog="dakd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in _commands():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        if argv is None or mod.NAME == chosen:
            mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


# sqlite errors of a tracking database the user cannot write (permissions, read-only mount).
_UNWRITABLE_DB = ("attempt to write a readonly database", "unable to open database file")


def _tracking_store_failure(e: BaseException) -> str | None:
    """The message for an MLflow failure caused by an unwritable sqlite tracking database, else None.

    MLflow raises its own MlflowException (wrapping sqlite's OperationalError) from inside the
    stage's tracking block; that is the environment, not a bug, so it gets a named error and exit 2
    like any DakdError instead of a traceback."""
    if not type(e).__module__.startswith(("mlflow", "sqlalchemy")):  # only MLflow uses sqlalchemy here
        return None
    text = str(e)
    reason = next((r for r in _UNWRITABLE_DB if r in text), None)
    if reason is None:
        return None
    from dakd_core.tracking import tracking_uri

    return (f"MLflow tracking database {tracking_uri()} cannot be written ({reason}): fix its permissions, "
            "point MLFLOW_TRACKING_URI at a writable store, or pass --no-mlflow where the command has it")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    from pydantic import ValidationError

    try:
        return int(args._run(args) or 0)
    except Preempted as e:  # a stop signal: checkpointed, lease released; exit as the signal would
        print(f"dakd {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except DakdError as e:
        print(f"dakd {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ValidationError as e:  # a value assigned to a validated config after construction
        from dakd_core.config import format_validation_error

        print(f"dakd {args.command}: error: {format_validation_error(e.title, e, 'assignment')}", file=sys.stderr)
        return 2
    except Exception as e:
        message = _tracking_store_failure(e)
        if message is None:
            raise  # a bug: keep the traceback
        print(f"dakd {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # python -m dakd_core.cli
    sys.exit(main())
