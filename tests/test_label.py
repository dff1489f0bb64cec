"""`slingshot label` against a scripted chat-completions server on 127.0.0.1: confidence, faults, cache, reports."""

from __future__ import annotations

import csv
import json
import math

import pytest
from conftest import POSITIVE, toy_rows, write_csv
from llm_server import Hang, Status, completion

from slingshot.confidence import (
    accuracy_by_min_confidence,
    agreement,
    logprob_confidence,
)
from slingshot.data import load_data
from slingshot.errors import DataError, RecipeError, RunDirError
from slingshot.label import label_file
from slingshot.llm import LLMError
from slingshot.recipe import recipe_from_dict

NAMES = ["neg", "pos"]


def text_of(request: dict) -> str:
    return request["messages"][-1]["content"].rsplit("Text: ", 1)[1].split("\n")[0]


def truth(text: str) -> str:
    return "pos" if set(text.split()) & set(POSITIVE) else "neg"


def is_hard(text: str) -> bool:
    """The scripted teacher gets these wrong: about one text in four."""
    return sum(map(ord, text)) % 4 == 0


def answer_tokens(label: str, chosen_logprob: float, other_logprob: float) -> list[dict]:
    other = "neg" if label == "pos" else "pos"
    return [{"token": label, "logprob": chosen_logprob,
             "top_logprobs": [{"token": label, "logprob": chosen_logprob}, {"token": other, "logprob": other_logprob},
                              {"token": "The", "logprob": -6.0}]}]


def teacher_with_logprobs(request: dict, number: int):
    """Right and sure on easy texts; wrong and unsure on hard ones."""
    text = text_of(request)
    if is_hard(text):
        wrong = "neg" if truth(text) == "pos" else "pos"
        return completion(wrong, logprobs=answer_tokens(wrong, math.log(0.55), math.log(0.45)))
    return completion(truth(text), logprobs=answer_tokens(truth(text), math.log(0.97), math.log(0.03)))


def recipe_for(tmp_path, url: str, **label) -> object:
    raw = {"name": "toy", "data": {"label_names": NAMES}, "output": {"dir": str(tmp_path / "runs")},
           "label": {"llm": {"base_url": url, "model": "scripted", "max_retries": 1, "timeout_s": 5,
                             "price_input_per_1m_usd": 1.0, "price_output_per_1m_usd": 2.0}, **label}}
    return recipe_from_dict(raw, tmp_path)


@pytest.fixture
def unlabelled(tmp_path):
    rows = [(i, text) for i, (text, _) in enumerate(toy_rows(60, seed=3))]
    return write_csv(tmp_path / "unlabelled.csv", rows, header=("id", "text"))


def read_labelled(path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# ---- pure confidence math ------------------------------------------------------------------------------------


def test_logprob_confidence_is_the_labels_share_of_label_mass():
    # as the client stores them; "The" begins no label and is left out of the mass
    tokens = [{"token": "pos", "logprob": math.log(0.6), "top": [{"token": "pos", "logprob": math.log(0.6)},
                                                               {"token": " neg", "logprob": math.log(0.2)},
                                                               {"token": "The", "logprob": math.log(0.2)}]}]
    assert logprob_confidence("pos", NAMES, tokens) == pytest.approx(0.6 / 0.8)
    # a first token that begins the label counts for it; quotes and spaces around it do not matter
    split = [{"token": '{"label": "', "logprob": 0.0, "top": []},
             {"token": "posit", "logprob": math.log(0.7), "top": [{"token": " negative", "logprob": math.log(0.1)}]},
             {"token": "ive", "logprob": 0.0, "top": []}]
    assert logprob_confidence("positive", ["negative", "positive"], split) == pytest.approx(0.7 / 0.8)
    assert logprob_confidence("pos", NAMES, None) is None
    assert logprob_confidence("pos", NAMES, [{"token": "maybe", "logprob": -0.1, "top": []}]) is None


def test_agreement_is_the_majority_share_and_ties_go_to_the_first_answer():
    assert agreement(["pos", "pos", "neg", None, "pos"]) == ("pos", 0.6)
    assert agreement(["neg", "pos", "pos", "neg"]) == ("neg", 0.5)
    assert agreement([None, None]) == (None, 0.0)


def test_accuracy_by_min_confidence_counts_what_each_threshold_keeps():
    rows = accuracy_by_min_confidence([True, True, False, True], [0.9, 0.8, 0.55, None], thresholds=(0.0, 0.7))
    assert rows == [{"min_confidence": 0.0, "kept": 3, "kept_share": 1.0, "accuracy": round(2 / 3, 4)},
                    {"min_confidence": 0.7, "kept": 2, "kept_share": round(2 / 3, 4), "accuracy": 1.0}]


# ---- labelling through the server ----------------------------------------------------------------------------


def test_logprob_confidence_ranks_correct_answers_above_wrong_ones(tmp_path, fake_llm, unlabelled):
    server = fake_llm(teacher_with_logprobs)
    result = label_file(recipe_for(tmp_path, server.url), str(unlabelled))
    rows = read_labelled(result.labelled_path)
    assert [row["id"] for row in rows] == [str(i) for i in range(60)]
    assert set(rows[0]) == {"id", "text", "label", "confidence", "teacher"} and rows[0]["teacher"] == "scripted (zero-shot)"
    right = [float(r["confidence"]) for r in rows if r["label"] == truth(r["text"])]
    wrong = [float(r["confidence"]) for r in rows if r["label"] != truth(r["text"])]
    assert wrong and min(right) > max(wrong)
    assert server.requests[0]["logprobs"] is True and server.requests[0]["top_logprobs"] == 5
    report = json.loads(result.report_path.read_text())
    assert report["labelled"] == 60 and report["invalid"] == 0 and sum(report["per_label"].values()) == 60
    assert report["confidence"]["from_logprobs"] == 60
    assert report["prompt_tokens"] == 60 * 20 and report["cost_usd"] == pytest.approx(60 * (20 * 1 + 3 * 2) / 1e6)
    assert report["sent"] == 60 and report["cached"] == 0


def test_filtering_by_confidence_raises_label_accuracy_and_is_recorded(tmp_path, fake_llm, unlabelled):
    server = fake_llm(teacher_with_logprobs)
    result = label_file(recipe_for(tmp_path, server.url), str(unlabelled))

    def label_accuracy(**data) -> tuple[float, dict]:
        recipe = recipe_from_dict({"data": {"train": str(result.labelled_path), "label_names": NAMES,
                                            "eval_fraction": 0.1, **data}}, tmp_path)
        loaded = load_data(recipe)
        names = loaded.label_names
        rows = [r for split in ("train", "eval") for r in loaded.splits[split]]
        return sum(names[r["label"]] == truth(r["text"]) for r in rows) / len(rows), loaded.provenance

    everything, _ = label_accuracy()
    filtered, provenance = label_accuracy(min_confidence=0.8, weight_by_confidence=True)
    assert everything < 0.9 and filtered == 1.0
    assert provenance["dropped_low_confidence"] > 0 and provenance["weighted_by_confidence"] is True
    assert provenance["teachers"] == {"scripted (zero-shot)": 60}
    assert provenance["labelling_cost_usd"] == pytest.approx(60 * 26 / 1e6)


def test_agreement_of_samples_where_no_logprobs_come_back(tmp_path, fake_llm, unlabelled):
    def reply(request, number):
        text = text_of(request)
        if not is_hard(text):  # easy texts: log-probabilities, and the right answer every time
            return teacher_with_logprobs(request, number)
        # hard texts: no log-probabilities; at temperature > 0 the answer wavers
        if request["temperature"] > 0 and number % 2:
            return "neg" if truth(text) == "pos" else "pos"
        return truth(text)

    server = fake_llm(reply)
    result = label_file(recipe_for(tmp_path, server.url, samples=5), str(unlabelled))
    report = result.report
    hard = report["confidence"]["from_agreement"]
    assert hard > 0 and report["confidence"]["from_logprobs"] == 60 - hard
    assert len(server.requests) == 60 + 4 * hard  # extra samples only where no log-probabilities came back
    assert {r["temperature"] for r in server.requests[60:]} == {0.7}
    rows = read_labelled(result.labelled_path)
    agreed = [float(r["confidence"]) for r in rows if is_hard(r["text"])]
    assert all(c in (0.4, 0.6, 0.8, 1.0) for c in agreed) and min(agreed) < 1.0

    before = len(server.requests)  # each sample has its own cache entry: a rerun asks nothing
    label_file(recipe_for(tmp_path, server.url, samples=5), str(unlabelled), overwrite=True)
    assert len(server.requests) == before


def test_a_rerun_sends_zero_requests_and_reproduces_the_labels(tmp_path, fake_llm, unlabelled):
    server = fake_llm(teacher_with_logprobs)
    first = label_file(recipe_for(tmp_path, server.url), str(unlabelled))
    labelled = first.labelled_path.read_text()
    with pytest.raises(RunDirError, match="already holds teacher labels"):
        label_file(recipe_for(tmp_path, server.url), str(unlabelled))
    second = label_file(recipe_for(tmp_path, server.url), str(unlabelled), overwrite=True)
    assert len(server.requests) == 60
    assert second.report["sent"] == 0 and second.report["cached"] == 60
    assert second.labelled_path.read_text() == labelled


def test_unknown_labels_and_junk_from_the_teacher_are_invalid_and_counted(tmp_path, fake_llm, unlabelled):
    def reply(request, number):
        text = text_of(request)
        return "neutral" if is_hard(text) else "" if text.startswith("the") else truth(text)

    server = fake_llm(reply)
    result = label_file(recipe_for(tmp_path, server.url), str(unlabelled))
    texts = [text for text, _ in toy_rows(60, seed=3)]
    invalid = sum(is_hard(t) or t.startswith("the") for t in texts)
    assert result.report["invalid"] == invalid > 0 and result.report["labelled"] == 60 - invalid
    assert len(read_labelled(result.labelled_path)) == 60 - invalid  # never guessed
    assert {"row", "answer"} <= set(result.report["invalid_examples"][0])
    assert result.report["confidence"]["none"] == 60  # no log-probabilities, one sample: no confidence


def test_texts_longer_than_the_teacher_context_are_truncated_and_counted(tmp_path, fake_llm):
    long_text = "good " * 2000
    source = write_csv(tmp_path / "long.csv", [("short and good",), (long_text,)], header=("text",))
    server = fake_llm(lambda request, number: "pos")
    result = label_file(recipe_for(tmp_path, server.url, context_tokens=512), str(source))
    assert result.report["truncated"] == 1
    budget = result.report["text_budget_chars"]
    assert 0 < budget < len(long_text)
    prompts = sorted(len(p) for p in server.user_prompts())
    assert prompts[-1] <= prompts[0] + budget


def test_an_empty_input_file_is_a_clear_error(tmp_path, fake_llm):
    server = fake_llm(lambda request, number: "pos")
    header_only = write_csv(tmp_path / "empty.csv", [], header=("text",))
    with pytest.raises(DataError, match="no texts to label"):
        label_file(recipe_for(tmp_path, server.url), str(header_only))
    blank = tmp_path / "blank.csv"
    blank.write_text("")
    with pytest.raises(DataError, match="is empty"):
        label_file(recipe_for(tmp_path, server.url), str(blank))
    assert server.requests == []


def test_rate_limits_and_server_errors_mid_run_are_retried(tmp_path, fake_llm, unlabelled):
    server = fake_llm(lambda request, number: Status(429) if number % 3 == 1 else Status(500) if number % 3 == 2
                      else truth(text_of(request)))
    recipe = recipe_for(tmp_path, server.url, llm={"base_url": server.url, "model": "scripted", "max_retries": 3,
                                                    "concurrency": 1})
    result = label_file(recipe, str(unlabelled))
    assert result.report["labelled"] == 60 and len(server.requests) == 180


def test_failures_keep_the_finished_labels_and_the_rerun_resumes(tmp_path, fake_llm, unlabelled):
    state = {"down": True}

    def reply(request, number):
        text = text_of(request)
        return Status(503, "overloaded") if state["down"] and is_hard(text) else truth(text)

    server = fake_llm(reply)
    with pytest.raises(LLMError, match="requests .* failed"):
        label_file(recipe_for(tmp_path, server.url), str(unlabelled))
    assert not (tmp_path / "runs" / "toy-labels" / "label_report.json").exists()
    state["down"] = False
    before = len(server.requests)
    result = label_file(recipe_for(tmp_path, server.url), str(unlabelled))
    hard = sum(is_hard(text) for text, _ in toy_rows(60, seed=3))
    assert len(server.requests) - before == hard and result.report["cached"] == 60 - hard


def test_a_hanging_endpoint_is_a_clear_error(tmp_path, fake_llm, unlabelled):
    server = fake_llm(lambda request, number: Hang(3))
    recipe = recipe_for(tmp_path, server.url, llm={"base_url": server.url, "model": "scripted", "max_retries": 0,
                                                    "timeout_s": 0.5})
    with pytest.raises(LLMError, match="no answer .* within 0.5 s"):
        label_file(recipe, str(unlabelled))


def test_k_shot_prompts_come_from_the_seed_set(tmp_path, fake_llm, unlabelled):
    seed = write_csv(tmp_path / "seed.csv", toy_rows(10, seed=9))
    server = fake_llm(lambda request, number: truth(text_of(request)))
    result = label_file(recipe_for(tmp_path, server.url, seed_set=str(seed), shots=4), str(unlabelled))
    prompt = server.user_prompts()[0]
    assert prompt.count("Label: pos") == 2 and prompt.count("Label: neg") == 2
    assert result.report["teacher"]["name"] == "scripted (4-shot)"


def test_a_seed_set_whose_labels_differ_from_the_recipes_is_a_clear_error(tmp_path, fake_llm, unlabelled):
    server = fake_llm(lambda request, number: "pos")
    odd = write_csv(tmp_path / "seed.csv", [("good film", "positive"), ("bad film", "neg")])
    with pytest.raises(DataError, match=r"differ from the recipe's \(not in data.label_names: positive; no seed "
                                        r"example of: pos\)"):
        label_file(recipe_for(tmp_path, server.url, seed_set=str(odd)), str(unlabelled))
    with pytest.raises(RecipeError, match="no seed set"):
        label_file(recipe_for(tmp_path, server.url, shots=2), str(unlabelled))
    assert server.requests == []


def test_the_teachers_gold_accuracy_is_reported_by_confidence(tmp_path, fake_llm, unlabelled):
    gold = write_csv(tmp_path / "gold.csv", toy_rows(40, seed=4))
    server = fake_llm(teacher_with_logprobs)
    recipe = recipe_for(tmp_path, server.url)
    recipe.data.gold = str(gold)
    report = label_file(recipe, str(unlabelled)).report["gold"]
    wrong = sum(is_hard(text) for text, _ in toy_rows(40, seed=4))
    assert report["examples"] == 40 and report["teacher_accuracy"] == pytest.approx(1 - wrong / 40, abs=1e-4)
    by_threshold = {row["min_confidence"]: row for row in report["accuracy_by_min_confidence"]}
    assert by_threshold[0.9]["accuracy"] == 1.0 and by_threshold[0.9]["kept"] == 40 - wrong


def test_regression_recipes_cannot_use_teacher_labels(tmp_path):
    with pytest.raises(RecipeError, match="teacher labels .* are for classification"):
        recipe_from_dict({"task": "regression", "data": {"min_confidence": 0.8}})
