"""Throughput of 1 vs 2 training processes on this machine for all-MiniLM-L6-v2 on SST-2 rows.

    .venv/bin/python bench/processes.py [--rows 3000] > bench/results/processes.json

Runs the example recipe (examples/sst2/recipe.yaml) for one epoch on --rows training rows: one process with 2 and
with 1 thread(s), then two processes through `accelerate launch --multi_gpu` (gloo on a CPU) with 1 thread each.
Reported per setting: real tokens/s and wall time from the run's summary.json, dev accuracy, peak RSS (per
process). On 2 cores little gain is expected: the matmuls already use both cores in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import REPO, emit, log, machine_info


def run(name: str, rows: int, threads: int, processes: int, out: Path) -> dict:
    overrides = [f"data.limit.train={rows}", "train.epochs=1", f"train.threads={threads}", f"name={name}",
                 f"output.dir={out}"]
    arguments = ["-m", "slingshot", "train", str(REPO / "examples" / "sst2" / "recipe.yaml"), "--overwrite"]
    for item in overrides:
        arguments += ["--set", item]
    if processes == 1:
        command = [sys.executable, *arguments]
    else:
        accelerate = str(Path(sys.executable).parent / "accelerate")
        command = [accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                   "--mixed_precision", "no", "--main_process_port", "0", *arguments]
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    log(f"{name}: {' '.join(command)}")
    subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL)
    summary = json.loads((out / name / "summary.json").read_text())
    metrics = json.loads((out / name / "metrics.json").read_text())
    result = {"setting": name, "processes": processes, "threads_per_process": threads,
              "real_tokens_per_s": summary["real_tokens_per_s"], "train_time_s": summary["train_time_s"],
              "wall_time_s": summary["wall_time_s"], "optimizer_steps": summary["optimizer_steps"],
              "dev_accuracy": metrics["eval"]["accuracy"], "peak_rss_mb_main_process": summary["peak_rss_mb"],
              "precision": summary["precision"]}
    log(result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "processes")
    args = parser.parse_args()
    results = [run("one-process-2-threads", args.rows, 2, 1, args.out),
               run("one-process-1-thread", args.rows, 1, 1, args.out),
               run("two-processes-1-thread", args.rows, 1, 2, args.out)]
    emit({"benchmark": "processes", "rows": args.rows, "machine": machine_info(), "load_average": os.getloadavg(),
          "results": results,
          "two_processes_vs_one": round(results[2]["real_tokens_per_s"] / results[0]["real_tokens_per_s"], 2)})


if __name__ == "__main__":
    main()
