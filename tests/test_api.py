"""The Python API runs the main job end to end on a tiny model, with the same results as the CLI's functions."""

import shutil

import pytest
from conftest import toy_recipe

import slingshot
from slingshot.errors import RecipeError


def test_api_trains_predicts_evaluates_compares_and_reports(tmp_path, tiny_bert, toy_data):
    run = slingshot.train(toy_recipe(tmp_path, tiny_bert, toy_data, epochs=8), ["train.seed=42"],
                          show_progress=False)
    assert isinstance(run, slingshot.Run) and (run.path / "model" / "config.json").is_file()
    assert run.metrics["eval"]["accuracy"] >= 0.9
    predictions = run.predict(["the movie was great", "an awful plot"])
    assert [p["predicted"] for p in predictions] == ["pos", "neg"]
    assert run.evaluate(toy_data["eval"])["accuracy"] == run.metrics["eval"]["accuracy"]
    report = run.compare(["majority"], latency_examples=2, bootstrap_samples=100)
    assert report["systems"][0]["metrics"]["accuracy"]["value"] >= 0.9
    assert run.report().name == "report.html"
    assert slingshot.load(run.path).summary["task"] == "classification"


def test_api_takes_a_yaml_path_and_raises_the_cli_errors(tmp_path, tiny_bert, toy_data):
    import yaml

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(toy_recipe(tmp_path, tiny_bert, toy_data, epochs=1)), encoding="utf-8")
    recipe = slingshot.load_recipe(path, ["train.lr=1e-3"])
    assert recipe.train.lr == 1e-3
    with pytest.raises(RecipeError, match="trian"):
        slingshot.train(path, ["trian.lr=1"])
    assert shutil.which  # the API imports nothing heavy until used


def test_train_and_compare_stay_callable_after_their_modules_are_imported(toy_trained_run, tmp_path):
    import slingshot.compare  # noqa: F401  (binds slingshot.compare to the module)
    import slingshot.train  # noqa: F401

    run = shutil.copytree(toy_trained_run, tmp_path / "run")
    report = slingshot.compare(str(run), ["majority"], latency_examples=2, bootstrap_samples=100)
    assert report["systems"][1]["kind"] == "majority"
    assert callable(slingshot.train)
