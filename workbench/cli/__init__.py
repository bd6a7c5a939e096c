"""The ``workbench`` command line. Each subcommand lives in its own module with ``add_parser``."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from ..errors import WorkbenchError, WorkbenchWarning

# subcommand modules, in the order `workbench --help` lists them
COMMANDS = ("models_cmd", "scan_cmd", "pattern_cmd", "episodic_cmd", "train_cmd", "niah_cmd", "sweep_cmd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description="Attention heads and in-context memory in language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv=None) -> int:
    """Entry point: parse, run, and turn WorkbenchError into a one-line message with exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.func(args) or 0
    except WorkbenchError as err:
        print(f"workbench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("workbench: interrupted (results written so far are kept)", file=sys.stderr)
        return 130


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """WorkbenchWarning as one line ('workbench: warning: ...'); other warnings as Python prints them."""
    if issubclass(category, WorkbenchWarning):
        print(f"workbench: warning: {message}", file=file or sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


if __name__ == "__main__":
    sys.exit(main())
