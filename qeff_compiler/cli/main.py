"""`qeffc`: the compiler driver (typer + rich).

Exit codes: 0 success; 2 a wrong request (usage, unknown pass, bad option, unsupported model); 1 the work failed;
130 interrupted (Ctrl-C); 143 terminated (SIGTERM). Each is printed as one line on stderr, never as a traceback
(docs/errors.md lists them).
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
from collections.abc import Iterator, Sequence

import typer
from typer._click.core import Command
from typer._click.exceptions import (  # typer vendors click; these are its errors
    BadParameter,
    ClickException,
    NoArgsIsHelpError,
    UsageError,
)

# each command module registers its commands on `app` when imported
from qeff_compiler.cli import accuracy, build, device, generate, graph, serve_http  # noqa: F401
from qeff_compiler.cli.app import app
from qeff_compiler.cli.terminal import discard_unwritable_stdout, guarded_stdout
from qeff_compiler.errors import QeffError

#: the order `qeffc --help` lists the commands in: a model's way from capture to run and serve, then accuracy
COMMAND_ORDER = (
    "capture", "passes", "opt", "compile", "estimate", "inspect", "calibrate", "run", "serve", "eval", "tune"
)
app.registered_commands.sort(key=lambda command: COMMAND_ORDER.index(command.name or ""))

__all__ = ["INTERRUPTED", "TERMINATED", "Terminated", "UsageError", "app", "main", "run"]


def run(argv: Sequence[str] | None = None) -> int:
    """Run `qeffc` with `argv` (default: the process's arguments) and return its exit code. Every way it can end
    badly is one line on stderr: a `QeffError` (its `exit_code`), a usage error (2), Ctrl-C (130)."""
    try:
        args = list(sys.argv[1:] if argv is None else argv)
        with _sigterm_interrupts(), guarded_stdout():
            code = _click_command().main(args=args, prog_name="qeffc", standalone_mode=False)
    except Terminated:
        return _fail("terminated (SIGTERM); no output was left half-written", TERMINATED)
    except QeffError as error:
        return _fail(str(error), error.exit_code)
    except NoArgsIsHelpError as error:  # the help has been printed
        return _fail(f"no command given (see '{error.ctx.command_path} --help')", error.exit_code)
    except UsageError as error:
        given = _given_value(args, error.param.opts) if isinstance(error, BadParameter) and error.param else None
        value = f" (got {given!r})" if given is not None else ""
        hint = f" (see '{error.ctx.command_path} --help')" if error.ctx is not None else ""
        return _fail(f"{error.format_message()}{value}{hint}", error.exit_code)
    except ClickException as error:
        return _fail(error.format_message(), error.exit_code)
    except typer.Abort:
        return _fail("aborted", 1)
    if code == INTERRUPTED:  # typer turns Ctrl-C into this exit code after the command's cleanup has run
        return _fail("interrupted; no output was left half-written", INTERRUPTED)
    return code or 0


def _given_value(args: list[str], opts: Sequence[str]) -> str | None:
    """The value given on the command line for an option, its last occurrence as click reads it (typer's
    conversion errors do not repeat the value)."""
    for index, arg in reversed(list(enumerate(args))):
        for opt in opts:
            if arg == opt and index + 1 < len(args):
                return args[index + 1]
            if arg.startswith(f"{opt}="):
                return arg[len(opt) + 1 :]
    return None


@functools.cache
def _click_command() -> Command:
    """The click command typer builds from `app` (built once: it takes ~13 ms, which in-process callers repeat)."""
    return typer.main.get_command(app)


#: exit code of a run interrupted by Ctrl-C (SIGINT), as shells report it (128 + signal 2)
INTERRUPTED = 130
#: exit code of a run stopped by SIGTERM (128 + signal 15)
TERMINATED = 143


class Terminated(BaseException):  # noqa: N818 (like KeyboardInterrupt: a signal, not an error of the program)
    """Raised in the main thread by SIGTERM so that the work in progress unwinds (its output is cleaned up) as it
    does for Ctrl-C."""


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"qeffc: error: {' '.join(message.split())}\n")
    return code


def main() -> None:
    """Console-script entry point."""
    code = run()
    discard_unwritable_stdout()
    sys.exit(code)


if __name__ == "__main__":
    main()
