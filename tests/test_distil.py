"""Training a student on teacher labels: weights, filtering, a gold set kept apart, provenance, and the teacher
against the student (`compare --split gold --baseline teacher`), through the library and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import toy_recipe, toy_rows, write_csv
from test_label import NAMES, is_hard, teacher_with_logprobs

from slingshot.compare import compare_run
from slingshot.label import label_file
from slingshot.recipe import CompareSection, recipe_from_dict
from slingshot.tasks.classification import ClassificationTask
from slingshot.train import train


def test_weighted_loss_is_the_confidence_weighted_sum_of_example_losses(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2)
    batch = {"input_ids": torch.tensor([[2, 5, 3], [2, 11, 3], [2, 6, 3]]), "attention_mask": torch.ones(3, 3,
                                                                                                          dtype=torch.long),
             "labels": torch.tensor([1, 0, 1])}
    weights = torch.tensor([1.0, 0.5, 0.0])
    task = ClassificationTask(regression=False)
    plain, count = task.loss(model, dict(batch))
    weighted, total = task.loss(model, {**batch, "weights": weights})
    per_example = torch.nn.functional.cross_entropy(model(input_ids=batch["input_ids"],
                                                          attention_mask=batch["attention_mask"]).logits,
                                                    batch["labels"], reduction="none")
    assert count == 3 and total == pytest.approx(1.5)
    assert plain.item() == pytest.approx(per_example.sum().item(), rel=1e-5)
    assert weighted.item() == pytest.approx((per_example * weights).sum().item(), rel=1e-5)


@pytest.fixture
def teacher_run(tmp_path, tiny_bert, fake_llm):
    """A student trained on scripted teacher labels (filtered, weighted), with a gold set kept apart."""
    server = fake_llm(teacher_with_logprobs)
    unlabelled = write_csv(tmp_path / "unlabelled.csv", [(text,) for text, _ in toy_rows(120, seed=5)],
                           header=("text",))
    gold = write_csv(tmp_path / "gold.csv", toy_rows(30, seed=6))
    raw = toy_recipe(tmp_path, tiny_bert, {"train": unlabelled, "eval": unlabelled}, epochs=6)
    raw["data"] = {"label_names": NAMES, "gold": str(gold), "min_confidence": 0.8, "weight_by_confidence": True}
    raw["label"] = {"input": str(unlabelled),
                    "llm": {"base_url": server.url, "model": "scripted", "max_retries": 1,
                            "price_input_per_1m_usd": 1.0, "price_output_per_1m_usd": 2.0}}
    raw["compare"] = {"latency_examples": 3, "bootstrap_samples": 200, "split": "gold", "baselines": ["teacher"]}
    return raw, server, gold


def test_a_student_trains_on_filtered_weighted_teacher_labels_and_is_scored_on_gold(tmp_path, teacher_run):
    raw, server, gold = teacher_run
    recipe = recipe_from_dict(raw, tmp_path)
    labels = label_file(recipe)
    result = train(recipe_from_dict(raw, tmp_path), show_progress=False)
    provenance = result.summary["labels"]
    assert provenance["source"] == str(labels.labelled_path.resolve())
    assert provenance["teachers"] == {"scripted (zero-shot)": 120}
    assert provenance["min_confidence"] == 0.8 and provenance["weighted_by_confidence"] is True
    assert provenance["rows_kept"] + provenance["dropped_low_confidence"] == 120
    assert provenance["gold"] == {"source": str(gold), "rows": 30}
    assert provenance["labelling_cost_usd"] == pytest.approx(labels.report["cost_usd"])
    assert "gold" in result.metrics and (result.run.path / "predictions_gold.jsonl").is_file()
    gold_rows = [json.loads(line) for line in (result.run.path / "predictions_gold.jsonl").read_text().splitlines()]
    assert [row["gold"] for row in gold_rows] == [label for _, label in toy_rows(30, seed=6)]
    # the eval split that picks the model is held out of the teacher labels; gold only scores
    assert result.summary["train_examples"] == pytest.approx(provenance["rows_kept"] * 0.9, abs=2)

    # the teacher against the student on gold: the teacher's gold answers were asked by `label`, so none are sent
    sent = len(server.requests)
    report = compare_run(str(result.run.path), CompareSection(**raw["compare"])).report
    assert len(server.requests) == sent
    teacher = report["systems"][1]
    assert teacher["kind"] == "teacher" and teacher["details"]["cached_answers"] == 30
    wrong = sum(is_hard(text) for text, _ in toy_rows(30, seed=6))
    assert teacher["metrics"]["accuracy"]["value"] == pytest.approx(1 - wrong / 30)
    assert 0 < report["tests"][0]["agreement"] <= 1 and report["tests"][0]["test"] == "McNemar exact"
    assert report["labelling_cost_usd"] == pytest.approx(labels.report["cost_usd"])
    assert teacher["cost_per_1k_usd"] == pytest.approx((20 * 1 + 3 * 2) / 1e6 * 1000)


def test_cli_run_labels_first_then_trains_and_compares_with_the_teacher(tmp_path, teacher_run, cli):
    raw, server, _ = teacher_run
    raw["data"].pop("min_confidence")
    path = tmp_path / "distil.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")

    code, out, _ = cli("label", "--help")
    assert code == 0 and "Example" in out
    code, out, err = cli("run", path)
    assert code == 0, err
    assert "labelled 120 of 120 texts" in out and "teacher accuracy on 30 gold examples" in out
    assert "Verdicts" in out and "teacher scripted (zero-shot)" in out
    sent = len(server.requests)
    code, out, err = cli("label", path)  # labelled already: refused, nothing sent
    assert code == 2 and "already holds teacher labels" in err and "--overwrite" in err and "Traceback" not in err
    code, out, err = cli("label", path, "--input", tmp_path / "missing.csv", "--output", tmp_path / "other")
    assert code == 2 and "data file not found" in err
    assert len(server.requests) == sent


def test_weighting_by_confidence_changes_what_is_learned(tmp_path, tiny_bert):
    # half the labels are flipped and marked unsure: weighted, the student must end up elsewhere than unweighted
    rows = [(text, label if i % 4 else ("neg" if label == "pos" else "pos"), 1.0 if i % 4 else 0.1)
            for i, (text, label) in enumerate(toy_rows(80, seed=1))]
    source = write_csv(tmp_path / "teacher.csv", rows, header=("text", "label", "confidence"))
    eval_file = write_csv(tmp_path / "dev.csv", toy_rows(20, seed=2))
    losses = {}
    for weighted in (False, True):
        raw = toy_recipe(tmp_path / str(weighted), tiny_bert, {"train": source, "eval": eval_file}, epochs=2)
        raw["data"]["weight_by_confidence"] = weighted
        result = train(recipe_from_dict(raw, tmp_path), show_progress=False)
        losses[weighted] = result.metrics["eval"]["loss"]
        assert result.summary["labels"].get("weighted_by_confidence", False) is weighted
    assert losses[True] != losses[False]
