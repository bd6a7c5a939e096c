"""The ``workbench`` command line. Each subcommand lives in its own module with ``add_parser``.

Every error a user can cause ends the same way: one line ``workbench: error: ...`` on stderr and exit code 2
(bad flags and values, checked by argparse before anything runs: see ``validate.py``; WorkbenchError and
OSError raised while running, with Python argument names replaced by the flags the user typed).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import warnings

from ..errors import WorkbenchError, WorkbenchWarning

# subcommand modules, in the order `workbench --help` lists them
COMMANDS = ("models_cmd", "scan_cmd", "pattern_cmd", "episodic_cmd", "train_cmd", "niah_cmd", "sweep_cmd")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line with exit code 2 (subcommand parsers inherit it)."""

    def error(self, message: str):
        fail(message if message.startswith("argument ") else f"{message} (see `{self.prog} --help`)")


def fail(message: str) -> None:
    """Print ``message`` as the one-line error and exit with code 2."""
    print(f"workbench: error: {one_line(message)}", file=sys.stderr)
    sys.exit(2)


def one_line(message: str) -> str:
    """Fold a message onto one line."""
    return " ".join(str(message).split())


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="workbench", description="Attention heads and in-context memory in language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def flag_names(message: str, parser: argparse.ArgumentParser) -> str:
    """Replace Python argument names in ``message`` (seq_len, n_prompts) by the command's flags (--seq-len, --prompts)."""
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs:
            continue
        for python_name in {action.dest, f"n_{action.dest}"}:
            if "_" in python_name:
                message = re.sub(rf"(?<![\w.-]){re.escape(python_name)}(?!\w)", longs[0], message)
    return message


def _command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def os_error_text(err: OSError) -> str:
    """'Permission denied: /x/y' rather than '[Errno 13] Permission denied: ...'."""
    if err.strerror and err.filename is not None:
        target = f"{err.filename} -> {err.filename2}" if err.filename2 is not None else str(err.filename)
        return f"{err.strerror}: {target}"
    return str(err) or type(err).__name__


def main(argv=None) -> int:
    """Entry point: parse, run, and turn WorkbenchError / OSError into a one-line message with exit code 2."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help (0), or a bad flag or value (2: its one-line error is printed)
        return done.code if isinstance(done.code, int) else 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.func(args) or 0
    except WorkbenchError as err:
        message = flag_names(str(err), _command_parser(parser, args.command))
    except OSError as err:
        message = os_error_text(err)
    except KeyboardInterrupt:
        print("workbench: interrupted (results written so far are kept)", file=sys.stderr)
        return 130
    print(f"workbench: error: {one_line(message)}", file=sys.stderr)
    return 2


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """WorkbenchWarning as one line ('workbench: warning: ...'); other warnings as Python prints them."""
    if issubclass(category, WorkbenchWarning):
        print(f"workbench: warning: {message}", file=file or sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


if __name__ == "__main__":
    sys.exit(main())
