"""Two processes with the gloo backend through `accelerate launch`: same results as one process, one run
directory, and an interrupted two-process run resumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import toy_recipe

pytestmark = pytest.mark.slow

SCRIPT = """
import os, sys, time, yaml
import torch
from slingshot.recipe import recipe_from_dict
slow = os.environ.get("SLOW_RANK")
if slow is not None and os.environ.get("RANK") == slow:  # this process writes its RNG state late
    save = torch.save
    def late_save(obj, path, *args, **kwargs):
        if "random_states" in str(path):
            time.sleep(1.0)
        return save(obj, path, *args, **kwargs)
    torch.save = late_save
from slingshot.train import train
raw = yaml.safe_load(open(sys.argv[1]))
stop = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2].isdigit() else None
result = train(recipe_from_dict(raw), resume="--resume" in sys.argv, stop_after_steps=stop, show_progress=False)
print("INTERRUPTED" if result.interrupted else "FINISHED", flush=True)
"""


def launch(tmp_path: Path, recipe: dict, *args: str, processes: int = 2,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    recipe_path = tmp_path / f"{recipe['name']}.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    script = tmp_path / "launch_train.py"
    script.write_text(SCRIPT, encoding="utf-8")
    accelerate = Path(sys.executable).parent / "accelerate"
    # --multi_gpu picks torch.distributed's launcher; without a GPU, Accelerate runs MULTI_CPU over gloo
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--main_process_port", "0", str(script), str(recipe_path), *args]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)
    # each rank's own error lines first: the launcher's tail alone hides which process failed, and why
    errors = [line for line in done.stderr.splitlines() if line.startswith("[rank") and "Error" in line]
    assert done.returncode == 0, "\n".join(errors) + "\n" + done.stderr[-3000:]
    return done


def single(tmp_path, recipe):
    from slingshot.recipe import recipe_from_dict
    from slingshot.train import train

    return train(recipe_from_dict(recipe), show_progress=False)


@pytest.fixture
def recipes(tmp_path, tiny_bert, toy_data):
    def make(name, **train):
        raw = toy_recipe(tmp_path, tiny_bert, toy_data, epochs=6, **train)
        raw["name"] = name
        return raw
    return make


def test_two_processes_match_one_process_with_the_same_effective_batches(tmp_path, recipes):
    # Two processes take alternate batches; one process accumulating 2 batches per step sees the same pairs.
    one = single(tmp_path, recipes("one", grad_accum=2, threads=1))
    done = launch(tmp_path, recipes("two", threads=1))
    assert "FINISHED" in done.stdout
    run = tmp_path / "runs" / "two"
    summary = json.loads((run / "summary.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert summary["processes"] == 2
    assert summary["optimizer_steps"] == one.summary["optimizer_steps"]
    assert summary["examples_seen"] == one.summary["examples_seen"]  # counted across both processes
    assert summary["real_tokens"] == one.summary["real_tokens"]
    # Tolerance: dropout masks differ (each process draws its own), so losses match only approximately.
    assert metrics["eval"]["accuracy"] == pytest.approx(one.metrics["eval"]["accuracy"], abs=0.05)
    assert metrics["eval"]["loss"] == pytest.approx(one.metrics["eval"]["loss"], abs=0.1)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["one", "two"]
    assert not (run / "checkpoints").exists() and (run / "model" / "config.json").is_file()
    assert len((run / "predictions.jsonl").read_text().splitlines()) == 40  # written once, not per process


def test_an_interrupted_two_process_run_resumes_to_the_end(tmp_path, recipes):
    recipe = recipes("resumed", threads=1, checkpoint_every=5)
    # Rank 1 writes its RNG state a second late: the checkpoint folder must not be renamed under it (CI once
    # crashed there), and the checkpoint must hold both processes' states.
    first = launch(tmp_path, recipe, "7", env={"SLOW_RANK": "1"})
    assert "INTERRUPTED" in first.stdout
    run = tmp_path / "runs" / "resumed"
    last = run / "checkpoints" / "last"
    assert last.is_dir() and not (run / "summary.json").exists()
    assert (last / "random_states_0.pkl").is_file() and (last / "random_states_1.pkl").is_file()
    assert not (run / "checkpoints" / "last.tmp").exists()
    second = launch(tmp_path, recipe, "--resume")
    assert "FINISHED" in second.stdout
    summary = json.loads((run / "summary.json").read_text())
    straight = single(tmp_path, recipes("straight", grad_accum=2, threads=1))
    assert summary["optimizer_steps"] == straight.summary["optimizer_steps"]
    assert summary["examples_seen"] == straight.summary["examples_seen"]
    # the log was cut back to the checkpoint once, by the one process that writes it: every step once, in order
    entries = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    steps = [entry["step"] for entry in entries if "loss" in entry]
    assert steps and steps == sorted(set(steps)) and steps[-1] <= summary["optimizer_steps"]
