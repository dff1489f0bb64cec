"""Trackers receive the logged metrics: read back from the TensorBoard event files and the MLflow file store."""

from __future__ import annotations

import pytest
from conftest import toy_recipe

from slingshot.errors import RecipeError
from slingshot.recipe import recipe_from_dict
from slingshot.train import train


def test_tensorboard_and_mlflow_receive_metrics_recipe_and_summary(tmp_path, tiny_bert, toy_data, monkeypatch):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = toy_recipe(tmp_path, tiny_bert, toy_data, epochs=2, log_every=2)
    raw["track"] = {"to": ["tensorboard", "mlflow"], "project": "toy-project", "dir": str(tmp_path / "tracking")}
    result = train(recipe_from_dict(raw), show_progress=False)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((tmp_path / "tracking").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "eval/accuracy", "summary/wall_time_s"} <= tags
    assert len(events.Scalars("train/loss")) == result.summary["optimizer_steps"] // 2

    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri((tmp_path / "tracking" / "mlruns").as_uri())
    client = MlflowClient()
    experiment = client.get_experiment_by_name("toy-project")
    run = client.search_runs([experiment.experiment_id])[0]
    assert run.data.params["train.lr"] == str(raw["train"]["lr"]) and run.data.params["task"] == "classification"
    assert run.data.metrics["final_eval/accuracy"] == pytest.approx(result.metrics["eval"]["accuracy"])
    history = client.get_metric_history(run.info.run_id, "eval/accuracy")
    assert [point.step for point in history] == [entry["step"] for entry in result.metrics["evaluations"]]


def test_a_tracker_that_is_not_installed_is_one_clear_error(tmp_path, tiny_bert, toy_data, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    raw = toy_recipe(tmp_path, tiny_bert, toy_data, epochs=1)
    raw["track"] = {"to": ["wandb"]}
    with pytest.raises(RecipeError, match="wandb package is not installed") as raised:
        train(recipe_from_dict(raw), show_progress=False)
    assert "pip install 'slingshot-lm[wandb]'" in raised.value.hint
    assert not (tmp_path / "runs" / "toy").exists()
