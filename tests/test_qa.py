"""Extractive QA: reading SQuAD data, windows with a stride, labels from offsets, decoding across windows, training."""

import json
import random

import numpy as np
import pytest
from conftest import FILLER, NEGATIVE, POSITIVE

from slingshot.errors import DataError, RecipeError
from slingshot.metrics import qa_metrics
from slingshot.models import load_tokenizer
from slingshot.qa_data import ANSWER_MISMATCH, EMPTY_CONTEXT, load_qa_file, read_qa_examples
from slingshot.recipe import recipe_from_dict
from slingshot.tasks import get_task
from slingshot.tasks.extractive_qa import Span, best_span, expected_f1_span, span_candidates

QUESTION = "it was"  # 2 tokens for the tiny word-level tokenizer


def qa_recipe(tmp_path, model, data=None, **sections) -> dict:
    raw = {
        "name": "toy-qa",
        "task": "extractive_qa",
        "model": {"name": str(model), "max_length": 32},
        "qa": {"stride": 8, "max_question_tokens": 6},
        "similarity": {"enabled": False},
        "train": {"epochs": 6, "lr": 3e-3, "tokens_per_batch": 512, "max_batch_size": 16, "threads": 1,
                  "warmup_ratio": 0.0},
        "output": {"dir": str(tmp_path / "runs")},
    }
    if data:
        raw["data"] = {"train": str(data["train"]), "eval": str(data["eval"])}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw


def example(words: list[str], first: int, last: int, **extra) -> dict:
    """A record whose answer is words[first..last] of a context made of `words`."""
    context = " ".join(words)
    start = len(" ".join(words[:first])) + (1 if first else 0)
    text = " ".join(words[first : last + 1])
    assert context[start : start + len(text)] == text
    return {"question": QUESTION, "context": context, "answers": [{"text": text, "answer_start": start}], **extra}


def toy_qa(count: int, seed: int) -> list[dict]:
    """Contexts of filler words with one positive word: the answer. Learnable by a tiny model in a few epochs."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        words = rng.choices(FILLER + NEGATIVE, k=rng.randint(4, 40))
        at = rng.randint(0, len(words))
        words.insert(at, rng.choice(POSITIVE))
        rows.append(example(words, at, at, id=f"q{seed}-{i}"))
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def prepared(tmp_path, tiny_bert, rows, **sections):
    recipe = recipe_from_dict(qa_recipe(tmp_path, tiny_bert, **sections))
    task = get_task("extractive_qa", recipe)
    dataset, _ = load_qa_file(str(write_jsonl(tmp_path / "qa.jsonl", rows)), need_answers=True)
    return task, dataset, task.prepare({"data": dataset}, load_tokenizer(tiny_bert), recipe)["data"]


def oracle_logits(encoded) -> list[np.ndarray]:
    """Logits that point exactly at each window's label (the [CLS] token when the answer is not inside)."""
    logits = []
    for length, (start, end) in zip(encoded["length"], encoded["labels"]):
        window = np.zeros((length, 2), dtype=np.float32)
        window[start, 0] = window[end, 1] = 10.0
        logits.append(window)
    return logits


def span_text(context: str, offsets, start: int, end: int) -> str:
    return context[offsets[start][0] : offsets[end][1]]


# ---------------------------------------------------------------------------------------------------- windows


def test_an_answer_crossing_a_window_edge_is_labelled_in_the_next_window(tmp_path, tiny_bert):
    words = [FILLER[i % len(FILLER)] for i in range(60)]
    # 32 tokens - [CLS] it was [SEP] ... [SEP] = 27 context words in the first window: words 0-26
    row = example(words, 25, 28)
    _, _, encoded = prepared(tmp_path, tiny_bert, [row])
    assert len(encoded) >= 2 and all(length <= 32 for length in encoded["length"])
    assert encoded["labels"][0] == [0, 0]  # not whole in the first window: [CLS]
    offsets, (start, end) = encoded["offsets"][1], encoded["labels"][1]
    assert span_text(row["context"], offsets, start, end) == row["answers"][0]["text"]
    # consecutive windows share qa.stride = 8 context tokens
    first_context = [o for o in encoded["offsets"][0] if o[0] >= 0]
    second_context = [o for o in encoded["offsets"][1] if o[0] >= 0]
    assert first_context[-8:] == second_context[:8]


def test_an_answer_at_the_very_end_of_the_context_is_labelled_and_decoded(tmp_path, tiny_bert):
    words = [FILLER[i % len(FILLER)] for i in range(50)] + ["superb", "fun"]
    row = example(words, 50, 51)
    task, _, encoded = prepared(tmp_path, tiny_bert, [row])
    last = len(encoded) - 1
    context_tokens = [i for i, o in enumerate(encoded["offsets"][last]) if o[0] >= 0]
    assert encoded["labels"][last] == [context_tokens[-2], context_tokens[-1]]
    outputs = task.outputs(oracle_logits(encoded), encoded)
    assert outputs["predicted"] == ["superb fun"]
    assert outputs["start"] == [row["context"].index("superb fun")]


def test_oracle_logits_decode_back_to_the_gold_answer_of_every_question(tmp_path, tiny_bert):
    rows = toy_qa(30, seed=3)
    words = [FILLER[i % len(FILLER)] for i in range(70)]
    rows.append(example(words, 24, 30))  # crosses the first window's edge
    several = example(["happy", "film", "and", "fun", "story"], 0, 0)
    several["answers"].append({"text": "fun", "answer_start": several["context"].index("fun")})
    rows.append(several)
    task, _, encoded = prepared(tmp_path, tiny_bert, rows)
    outputs = task.outputs(oracle_logits(encoded), encoded)
    assert outputs["predicted"] == [r["answers"][0]["text"] for r in rows]  # labels come from the first answer
    assert outputs["gold"][-1] == ["happy", "fun"]  # every gold answer is kept for scoring
    metrics = task.metrics(outputs, encoded, None)
    assert metrics["exact_match"] == 100.0 and metrics["f1"] == 100.0
    assert metrics["windows"] > len(rows)
    assert task.eval_loss(oracle_logits(encoded), encoded) < 0.01


def test_several_gold_answers_score_the_best_match(tmp_path, tiny_bert):
    row = example(["happy", "film", "and", "fun", "story"], 0, 0)
    row["answers"].append({"text": "fun story", "answer_start": row["context"].index("fun story")})
    task, _, encoded = prepared(tmp_path, tiny_bert, [row])
    logits = np.zeros((encoded["length"][0], 2), dtype=np.float32)
    offsets = encoded["offsets"][0]
    fun = next(i for i, o in enumerate(offsets) if o[0] == row["context"].index("fun"))
    logits[fun, 0] = logits[fun + 1, 1] = 10.0  # the model answers the second gold answer
    outputs = task.outputs([logits], encoded)
    assert outputs["predicted"] == ["fun story"]
    assert task.metrics(outputs, encoded, None)["exact_match"] == 100.0


# ---------------------------------------------------------------------------------------------------- decoding


def window(logits: list[tuple[float, float]], context_from: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits per token; tokens from `context_from` on are context word i at characters (2i, 2i + 1)."""
    offsets = [[-1, -1] if i < context_from else [2 * (i - context_from), 2 * (i - context_from) + 1]
               for i in range(len(logits))]
    return np.asarray(logits, dtype=np.float32), np.asarray(offsets)


CONTEXT = "a b c d e f"


def test_decoding_picks_the_best_span_across_windows():
    first = window([(9, 9), (0, 0), (1, 0), (0, 1), (0, 0)], context_from=2)  # [CLS]-like token is never chosen
    second = window([(0, 0), (0, 0), (3, 0), (0, 0), (0, 4)], context_from=2)
    span = best_span([first, second], CONTEXT, n_best=5, max_answer_tokens=10)
    assert span is not None and span.text == "a b c" and span.score == 7.0


def test_decoding_respects_the_maximum_answer_length():
    logits = window([(0, 0), (5, 0), (0, 1), (2, 6), (0, 0)], context_from=1)
    assert best_span([logits], CONTEXT, n_best=5, max_answer_tokens=3).text == "a b c"  # 5 + 6
    assert best_span([logits], CONTEXT, n_best=5, max_answer_tokens=2).text == "c"  # 2 + 6 beats a b (5 + 1)


def test_expected_f1_decoding_picks_the_span_the_likely_answers_overlap_most():
    # probabilities 0.4 / 0.3 / 0.3; expected F1 by hand: "w1" 0.4 + 0.3 * 0.5 = 0.55,
    # "w1 w2 w3" 0.4 * 0.5 + 0.3 + 0.3 * 0.8 = 0.74, "w2 w3" 0.3 * 0.8 + 0.3 = 0.54: the second wins
    candidates = [Span("w1", 0, float(np.log(0.4))), Span("w1 w2 w3", 0, float(np.log(0.3))),
                  Span("w2 w3", 3, float(np.log(0.3)))]
    assert expected_f1_span(candidates, top=3).text == "w1 w2 w3"
    assert expected_f1_span(candidates, top=1).text == "w1"  # one candidate: the best one
    assert expected_f1_span([], top=3) is None


def test_candidates_are_ranked_and_deduplicated_across_windows():
    # the same span ("b") scored in two windows is kept once, with its better score
    first = window([(0, 0), (0, 0), (2, 2), (0, 0)], context_from=1)
    second = window([(0, 0), (0, 0), (3, 3), (0, 0)], context_from=1)
    candidates = span_candidates([first, second], CONTEXT, n_best=3, max_answer_tokens=10)
    scores = [c.score for c in candidates]
    assert scores == sorted(scores, reverse=True)
    assert [c.text for c in candidates].count("b") == 1 and candidates[0] == Span("b", 2, 6.0)


def test_expected_f1_decoding_from_the_recipe(tmp_path, tiny_bert):
    task, _, encoded = prepared(tmp_path, tiny_bert, [example(["fun", "film"], 0, 0)],
                                qa={"decoding": "expected_f1", "n_best": 5})
    assert task.settings.decoding == "expected_f1"
    logits = np.zeros((encoded["length"][0], 2), dtype=np.float32)
    outputs = task.outputs([logits], encoded)
    assert outputs["predicted"][0] != "" and outputs["start"][0] is not None
    with pytest.raises(RecipeError):
        recipe_from_dict(qa_recipe(tmp_path, tiny_bert, qa={"decoding": "mbr"}))


def test_no_valid_span_gives_no_answer_and_counts_it(tmp_path, tiny_bert):
    # with one candidate each, the best start comes after the best end: no span
    logits = window([(0, 0), (0, 5), (5, 0)], context_from=1)
    assert best_span([logits], CONTEXT, n_best=1, max_answer_tokens=10) is None
    task, _, encoded = prepared(tmp_path, tiny_bert, [example(["fun", "film"], 0, 0)], qa={"n_best": 1})
    reversed_logits = np.zeros((encoded["length"][0], 2), dtype=np.float32)
    context_tokens = [i for i, o in enumerate(encoded["offsets"][0]) if o[0] >= 0]
    reversed_logits[context_tokens[1], 0] = reversed_logits[context_tokens[0], 1] = 5.0
    outputs = task.outputs([reversed_logits], encoded)
    assert outputs["predicted"] == [""] and outputs["start"] == [None]
    assert task.metrics(outputs, encoded, None)["no_answer_found"] == 1


# ---------------------------------------------------------------------------------------------------- bad input


def squad(*paragraphs) -> dict:
    return {"version": "v1.1", "data": [{"title": "doc", "paragraphs": list(paragraphs)}]}


def test_malformed_squad_json_names_the_path_inside_the_file(tmp_path):
    good = {"context": "fun film", "qas": [{"id": "a", "question": "q", "answers": [{"text": "fun", "answer_start": 0}]}]}
    bad = {"context": "fun film", "qas": [good["qas"][0], {"id": "b", "question": "q", "answers": "fun"}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(squad(good, bad)), encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_qa_examples(str(path))
    assert error.value.message == f"{path}: data[0].paragraphs[1].qas[1].answers: expected a list, got str"
    assert "SQuAD" in error.value.hint
    path.write_text(json.dumps(squad({"context": "x", "qas": [{"id": "c", "answers": []}]})), encoding="utf-8")
    with pytest.raises(DataError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[0\]: missing 'question'"):
        read_qa_examples(str(path))
    path.write_text('{"data": [', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.json:1: malformed JSON"):
        read_qa_examples(str(path))


def test_squad_json_and_jsonl_give_the_same_examples(tmp_path):
    qa = {"id": "a", "question": "which?", "answers": [{"text": "film", "answer_start": 4}, {"text": "fun", "answer_start": 0}]}
    json_path = tmp_path / "squad.json"
    json_path.write_text(json.dumps(squad({"context": "fun film", "qas": [qa]})), encoding="utf-8")
    hub_style = {"id": "a", "title": "doc", "question": "which?", "context": "fun film",
                 "answers": {"text": ["film", "fun"], "answer_start": [4, 0]}}
    jsonl_path = write_jsonl(tmp_path / "flat.jsonl", [hub_style])
    (from_json, _), (from_jsonl, _) = read_qa_examples(str(json_path)), read_qa_examples(str(jsonl_path))
    keys = ("id", "title", "question", "context", "answers", "answer_starts")
    assert [{k: e[k] for k in keys} for e in from_json] == [{k: e[k] for k in keys} for e in from_jsonl]
    assert from_json[0]["row"] == "data[0].paragraphs[0].qas[0]" and from_jsonl[0]["row"] == "line 1"


def test_answer_start_not_matching_the_context_and_empty_contexts_are_skipped_and_counted(tmp_path, tiny_bert):
    from slingshot.data import load_data

    rows = toy_qa(10, seed=1)
    rows[3]["answers"][0]["answer_start"] += 1  # points one character too far
    rows[5]["context"] = "   "
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    dev = write_jsonl(tmp_path / "dev.jsonl", toy_qa(5, seed=2))
    loaded = load_data(recipe_from_dict(qa_recipe(tmp_path, tiny_bert, {"train": train, "eval": dev})))
    skipped = loaded.skipped["train"]
    assert len(loaded.splits["train"]) == 8
    assert skipped.count == 2 and skipped.reasons == {ANSWER_MISMATCH: 1, EMPTY_CONTEXT: 1}
    assert skipped.examples == [f"{train} line 4", f"{train} line 6"]


def test_a_question_longer_than_the_window_is_cut_and_still_answered(tmp_path, tiny_bert):
    long_question = " ".join(FILLER * 10)  # 120 tokens, a window holds 32
    row = example(["happy", "film", "and", "fun", "story"], 3, 4)
    row["question"] = long_question
    task, dataset, encoded = prepared(tmp_path, tiny_bert, [row])
    assert all(length <= 32 for length in encoded["length"])
    assert encoded["question_cut"][0] is True
    outputs = task.outputs(oracle_logits(encoded), encoded)
    assert outputs["predicted"] == ["fun story"]
    assert task.records(dataset, outputs, None)[0]["question_cut"] is True


def test_windows_without_room_for_context_are_a_recipe_error(tmp_path, tiny_bert):
    with pytest.raises(RecipeError, match="qa.stride"):
        recipe_from_dict(qa_recipe(tmp_path, tiny_bert, qa={"stride": 40}))


# ---------------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def toy_qa_run(tmp_path_factory, tiny_bert):
    from slingshot.train import train

    folder = tmp_path_factory.mktemp("toy-qa")
    data = {"train": write_jsonl(folder / "train.jsonl", toy_qa(200, seed=1)),
            "eval": write_jsonl(folder / "dev.jsonl", toy_qa(40, seed=2))}
    return train(recipe_from_dict(qa_recipe(folder, tiny_bert, data)), show_progress=False), data


def test_tiny_encoder_learns_to_extract_the_answer_span(toy_qa_run):
    result, _ = toy_qa_run
    metrics = result.metrics["eval"]
    baseline = qa_metrics([" ".join(r["context"].split()[:1]) for r in toy_qa(40, seed=2)],
                          [[a["text"] for a in r["answers"]] for r in toy_qa(40, seed=2)])
    assert metrics["f1"] >= 80 and metrics["f1"] > baseline["f1"] + 50
    assert result.metrics["best_metric"] == "f1"
    records = [json.loads(line) for line in result.run.predictions.read_text().splitlines()]
    assert len(records) == 40
    assert {"row", "id", "question", "context", "gold", "predicted", "start", "score"} <= set(records[0])
    assert result.summary["eval_examples"] >= 40  # windows


def test_the_saved_model_answers_with_plain_transformers(toy_qa_run):
    # Transformers 5 removed pipeline("question-answering") (REMOVED_TASKS in transformers/pipelines), so "loads
    # without Slingshot" means: AutoModelForQuestionAnswering + AutoTokenizer and the textbook argmax decoding.
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    result, _ = toy_qa_run
    tokenizer = AutoTokenizer.from_pretrained(str(result.run.model))
    model = AutoModelForQuestionAnswering.from_pretrained(str(result.run.model)).eval()
    rows = toy_qa(10, seed=2)
    correct = 0
    for row in rows:
        inputs = tokenizer(row["question"], row["context"], return_offsets_mapping=True, return_tensors="pt")
        offsets = inputs.pop("offset_mapping")[0]
        with torch.inference_mode():
            output = model(**inputs)
        context = torch.tensor([s == 1 for s in inputs.sequence_ids(0)])
        start = int(output.start_logits[0].masked_fill(~context, -1e9).argmax())
        end = int(output.end_logits[0].masked_fill(~context, -1e9).argmax())
        correct += row["context"][int(offsets[start][0]) : int(offsets[end][1])] == row["answers"][0]["text"]
    assert correct >= 8
