"""What every command shares: the console, turning tuneloop errors into one clear line, finding the project."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from tuneloop.project import PROJECT_FILE, Project, ProjectError

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


class UserError(Exception):
    """Bad input from the user: printed as one line naming what to fix, exit code 2."""


def friendly_errors(func: F) -> F:
    """Print tuneloop's own errors (which already say what to fix) without a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (UserError, ProjectError, FileNotFoundError) as err:
            err_console.print(f"[bold red]error:[/] {err}", markup=True, highlight=False)
            raise typer.Exit(2) from None
        except Exception as err:  # errors of our own types carry their fix in the message
            if type(err).__module__.startswith("tuneloop"):
                err_console.print(f"[bold red]error:[/] {err}", markup=True, highlight=False)
                raise typer.Exit(2) from None
            raise

    return wrapper  # type: ignore[return-value]


def find_project(start: str | Path = ".", required: bool = True) -> Project | None:
    """The project whose tuneloop.yaml is in `start` or a parent folder."""
    here = Path(start).resolve()
    for folder in (here, *here.parents):
        if (folder / PROJECT_FILE).exists():
            return Project.load(folder)
    if required:
        raise UserError(f"no {PROJECT_FILE} in {here} or its parents: run `tuneloop init DIR` or pass explicit paths.")
    return None
