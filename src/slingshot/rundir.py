"""The run directory: its layout, reading and writing its artefacts, the no-overwrite rule, and resource figures."""

from __future__ import annotations

import csv
import json
import os
import platform
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slingshot.errors import RunDirError


@dataclass(frozen=True)
class RunDir:
    """Paths of one run. A run is finished when summary.json exists."""

    path: Path

    @property
    def recipe(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def model(self) -> Path:
        return self.path / "model"

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def predictions(self) -> Path:
        return self.path / "predictions.jsonl"

    @property
    def train_log(self) -> Path:
        return self.path / "train_log.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def finished(self) -> bool:
        return self.summary.is_file()

    @property
    def resumable(self) -> bool:
        return (self.last_checkpoint / "slingshot_state.json").is_file()


def open_run(root: str | Path, name: str, *, overwrite: bool, resume: bool) -> RunDir:
    """The run directory to train into, applying the rule that finished work is never overwritten silently."""
    run = RunDir(Path(root) / name)
    if run.path.exists() and any(run.path.iterdir()):
        if resume:
            if run.finished:
                raise RunDirError(f"run {run.path} is finished; there is nothing to resume",
                                  "use --overwrite to train again, or --set name=<new name>")
            if not run.resumable:
                raise RunDirError(f"run {run.path} has no checkpoint to resume from",
                                  "start it again with --overwrite")
            return run
        if not overwrite:
            state = "finished" if run.finished else "unfinished (interrupted)"
            hint = "pass --overwrite to replace it, or --set name=<new name>"
            if not run.finished and run.resumable:
                hint = "pass --resume to continue it, --overwrite to start over, or --set name=<new name>"
            raise RunDirError(f"run directory {run.path} already holds a {state} run", hint)
        shutil.rmtree(run.path)
    elif resume:
        raise RunDirError(f"no run to resume at {run.path}", "drop --resume to start a new run")
    run.path.mkdir(parents=True, exist_ok=True)
    return run


def find_run(path: str | Path) -> RunDir:
    """A finished run directory named by the user (`evaluate`, `predict`)."""
    run = RunDir(Path(path))
    if not run.path.is_dir():
        raise RunDirError(f"run directory not found: {run.path}", "give the folder `slingshot train` wrote, e.g. runs/sst2")
    # a LoRA generation or seq2seq run keeps its adapter (adapter_config.json) rather than full weights
    if not (run.model / "config.json").is_file() and not (run.model / "adapter_config.json").is_file():
        raise RunDirError(f"{run.path} has no trained model (model/config.json)",
                          "finish training first (`slingshot train RECIPE --resume` continues an interrupted run)")
    return run


def write_text(path: Path, text: str) -> None:
    """Write atomically: a crash mid-write, or a reader in another process, sees the old file or the new one,
    never half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    """Write atomically (see `write_text`)."""
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_table(path: Path, records: list[dict[str, Any]], columns: list[str]) -> None:
    """Records as CSV, TSV or JSONL (by the file's suffix), written atomically: never half a file."""
    suffix = path.suffix.lower()
    if suffix not in {".csv", ".tsv", ".jsonl"}:
        raise RunDirError(f"cannot write {path}: unsupported file type '{suffix}'", "name a .csv, .tsv or .jsonl file")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as handle:
        if suffix == ".jsonl":
            for record in records:
                handle.write(json.dumps({c: record.get(c) for c in columns}, ensure_ascii=False) + "\n")
        else:
            writer = csv.writer(handle, delimiter="\t" if suffix == ".tsv" else ",", lineterminator="\n")
            writer.writerow(columns)
            writer.writerows([["" if record.get(c) is None else record.get(c) for c in columns] for record in records])
    os.replace(tmp, path)


def append_jsonl(path: Path, row: dict) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def truncate_log(path: Path, last_step: int) -> None:
    """Drop log lines written after the checkpoint a resumed run restarts from."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= last_step]
    write_text(path, "".join(line + "\n" for line in kept))


class ResourceMeter:
    """Wall and CPU time since it was created; peak resident memory of this process (its whole life)."""

    def __init__(self) -> None:
        self.wall_start = time.perf_counter()
        self.cpu_start = time.process_time()

    def figures(self) -> dict[str, float]:
        return {
            "wall_time_s": round(time.perf_counter() - self.wall_start, 2),
            "cpu_time_s": round(time.process_time() - self.cpu_start, 2),
            "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1),
        }


_seen_peak = 0  # the highest peak reported so far: the kernel's VmHWM can lag a moment behind VmRSS


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the next peak_rss_bytes() covers only what follows."""
    global _seen_peak
    _seen_peak = 0
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _resident() -> tuple[int, int] | None:
    """(VmRSS, peak) in bytes from /proc/self/status, the peak never below one reported before: the kernel updates
    VmHWM lazily, so a reading can trail the VmRSS of a moment ago. None off Linux."""
    global _seen_peak
    memory: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                name = line.split(":", 1)[0]
                if name in ("VmRSS", "VmHWM"):
                    memory[name] = int(line.split()[1]) * 1024
    except OSError:
        return None
    if "VmRSS" not in memory:
        return None
    _seen_peak = max(_seen_peak, *memory.values())
    return memory["VmRSS"], _seen_peak


def peak_rss_bytes() -> int:
    """Peak resident memory: VmHWM on Linux (reset by exec, unlike ru_maxrss which a spawned child inherits), else
    ru_maxrss."""
    resident = _resident()
    if resident is not None:
        return resident[1]
    scale = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes on macOS, kilobytes on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def memory_figures() -> dict[str, float]:
    """Resident memory now and at its peak so far, in MB, for a training-log line ({} where /proc is missing)."""
    resident = _resident()
    if resident is None:
        return {}
    return {"rss_mb": round(resident[0] / 2**20, 1), "peak_rss_mb": round(resident[1] / 2**20, 1)}


def estimated_cost_usd(wall_time_s: float, price_per_hour_usd: float) -> float:
    return round(wall_time_s / 3600 * price_per_hour_usd, 6)


def versions() -> dict[str, str]:
    import accelerate
    import datasets
    import torch
    import transformers

    import slingshot

    return {
        "slingshot": slingshot.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
    }
