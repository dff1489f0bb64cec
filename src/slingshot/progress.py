"""What a person watching training sees: a Rich progress line on a terminal, plain periodic lines in a log."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainProgress:
    """Step, loss, learning rate, real tokens/s and ETA; evaluation results printed as they come."""

    def __init__(self, total_steps: int, *, enabled: bool = True, start_step: int = 0, console: Console | None = None):
        self.total_steps = total_steps
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.interactive = self.console.is_terminal
        self.start_step = start_step
        self._last_print = 0.0
        self._progress: Progress | None = None
        self._task_id = None

    def __enter__(self) -> "TrainProgress":
        if self.enabled and self.interactive:
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[tps]} tok/s  epoch {task.fields[epoch]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._progress.__enter__()
            self._task_id = self._progress.add_task(
                "train", total=self.total_steps, completed=self.start_step, loss="-", lr="-", tps="-", epoch=0
            )
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def step(self, step: int, loss: float, lr: float, tokens_per_s: float, epoch: int) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.update(self._task_id, completed=step, loss=f"{loss:.4f}", lr=f"{lr:.2e}",
                                  tps=f"{tokens_per_s:,.0f}", epoch=epoch)
            return
        now = time.monotonic()
        if now - self._last_print >= 30 or step == self.total_steps:  # a log file gets a line every 30 s
            self._last_print = now
            self.console.print(f"step {step}/{self.total_steps}  loss {loss:.4f}  lr {lr:.2e}  "
                               f"{tokens_per_s:,.0f} real tok/s  epoch {epoch}", highlight=False)

    def evaluation(self, entry: dict[str, Any], metric: str) -> None:
        if not self.enabled:
            return
        mark = "  (best so far)" if entry.get("best") else ""
        self.console.print(f"eval at step {entry['step']}: {metric} {entry[metric]:.4f}  "
                           f"loss {entry['loss']:.4f}{mark}", highlight=False)

    def note(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, highlight=False)
