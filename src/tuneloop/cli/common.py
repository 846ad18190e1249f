"""What every command shares: the console, how errors reach the user, finding the project.

An error reaches the user in one of two ways:

```
expected: bad input, a missing file, a model or hub      one line "error: <what is wrong and what to do>"     exit 2
          that cannot be used
unexpected: a defect of tuneloop                         the full traceback, then one line "tuneloop bug:     exit 70
                                                         <type: message>" asking for a report
```
`tuneloop --debug CMD` (or `TUNELOOP_DEBUG=1`) prints the traceback of expected errors too. Typer's own usage errors
(unknown option, missing argument) keep typer's format.
"""

from __future__ import annotations

import functools
import os
import re
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from typer.exceptions import TyperException
from rich.console import Console
from rich.text import Text

from tuneloop.project import PROJECT_FILE, Project, ProjectError

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

DEBUG_ENV = "TUNELOOP_DEBUG"
EXIT_USER_ERROR = 2
EXIT_BUG = 70  # sysexits EX_SOFTWARE: scripts can tell a tuneloop bug from a failed check (1) or bad input (2)
EXIT_INTERRUPTED = 130
_debug_flag = False


class UserError(Exception):
    """Bad input from the user: printed as one line naming what to fix, exit code 2."""


def set_debug(enabled: bool) -> None:
    global _debug_flag
    _debug_flag = enabled


def debug_enabled() -> bool:
    return _debug_flag or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def is_expected(err: BaseException) -> bool:
    """Errors that describe the user's input or machine, not a defect of tuneloop.

    tuneloop's own exception types carry their fix in the message; an OSError is a file, disk, permission or network
    problem (hub libraries raise OSError subclasses for unknown ids and unreachable hosts).
    """
    return isinstance(err, (UserError, ProjectError, OSError)) or type(err).__module__.split(".")[0] == "tuneloop"


def one_line(err: BaseException) -> str:
    """The error as a single line: library messages often span several lines."""
    if isinstance(err, OSError) and err.filename and err.strerror:
        return f"{err.filename}: {err.strerror.lower()}"
    text = re.sub(r"\s*\n\s*", " ", str(err)).strip()
    return text or type(err).__name__


def report_error(err: BaseException) -> int:
    """Print an error the way the module docstring shows; returns the exit code."""
    expected = is_expected(err)
    if debug_enabled() or not expected:
        err_console.print("".join(traceback.format_exception(err)), end="", markup=False, highlight=False, soft_wrap=True)
    if expected:
        line = Text.assemble(("error: ", "bold red"), one_line(err))
        err_console.print(line, soft_wrap=True, highlight=False)
        return EXIT_USER_ERROR
    line = Text.assemble(("tuneloop bug: ", "bold red"), f"{type(err).__name__}: {one_line(err)} — this is a defect in "
                         "tuneloop, not in your input; please report it with the traceback above and the output of "
                         "`tuneloop doctor --json`.")
    err_console.print(line, soft_wrap=True, highlight=False)
    return EXIT_BUG


def friendly_errors(func: F) -> F:
    """Run a command so every error ends in one clear line (module docstring); applied to every command."""
    if getattr(func, "__tuneloop_friendly__", False):
        return func

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, TyperException):
            raise  # typer's own exits and usage errors keep their format
        except KeyboardInterrupt:
            if debug_enabled():
                err_console.print(traceback.format_exc(), end="", markup=False, highlight=False)
            err_console.print("interrupted", highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as err:
            raise typer.Exit(report_error(err)) from None

    wrapper.__tuneloop_friendly__ = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def guard_commands(app: typer.Typer) -> None:
    """Give every registered command (of `app` and its groups) the error handling of `friendly_errors`.

    Done once, centrally, so a command added without the decorator still never shows a user a bare traceback.
    """
    for command in app.registered_commands:
        if command.callback is not None:
            command.callback = friendly_errors(command.callback)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            guard_commands(group.typer_instance)


def find_project(start: str | Path = ".", required: bool = True) -> Project | None:
    """The project whose tuneloop.yaml is in `start` or a parent folder."""
    here = Path(start).resolve()
    for folder in (here, *here.parents):
        if (folder / PROJECT_FILE).exists():
            return Project.load(folder)
    if required:
        raise UserError(f"no {PROJECT_FILE} in {here} or its parents: run `tuneloop init DIR` or pass explicit paths.")
    return None
