"""The one progress display of every command that calls a model: a rich bar with count, rate and ETA.

```
eval unconstrained ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━ 37/60  0.84/s  0:00:44  ETA 0:00:27
```

`progress_bar(enabled)` is a context manager yielding `task(label, total, completed=0) -> advance(n, label=None)`;
work that is resumed passes what is already done as `completed`, so rate and ETA count only the work left. A run of
named stages (the data gate) passes each stage's name as `label` when it finishes, so the bar says where it is.
Disabled, every call is a no-op, so callers never branch on it. Every progress display of tuneloop is made here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

Advance = Callable[..., None]  # advance(n=1, label=None)
Task = Callable[..., Advance]
console = Console()  # resolves sys.stdout when it prints, so captured output (tests, pipes) sees it


def say(text: str) -> None:
    """One line of run output beside the bars (what a derived number is and why, what was resumed)."""
    console.print(text, highlight=False)


class RateColumn(ProgressColumn):
    """Items per second (or seconds per item when slower than one a second), over rich's moving window."""

    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text("  –/s", style="progress.data.speed")
        text = f"{speed:.2f}/s" if speed >= 1 else f"{1 / speed:.1f}s/it"
        return Text(text, style="progress.data.speed")


def _noop(_n: int = 1, label: str | None = None) -> None:
    return None


@contextlib.contextmanager
def progress_bar(enabled: bool = True, out: Console | None = None, transient: bool = False) -> Iterator[Task]:
    """Yield `task(label, total, completed=0)`, which adds a bar and returns its `advance(n, label=None)`;
    `transient` bars vanish when the block ends (the gate's: its summary line follows)."""
    if not enabled:
        yield lambda label, total, completed=0: _noop
        return
    bar = Progress(TextColumn("[bold]{task.description}[/]"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=out or console,
                   transient=transient)

    def task(label: str, total: int, completed: int = 0) -> Advance:
        # rich measures speed only from the advances it sees, so a resumed part does not inflate the rate
        task_id = bar.add_task(label, total=total, completed=completed)

        def advance(n: int = 1, label: str | None = None) -> None:
            if label is None:
                bar.advance(task_id, n)
            else:
                bar.update(task_id, advance=n, description=label)

        return advance

    with bar:
        yield task
