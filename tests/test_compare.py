"""`compare` end to end: a tiny fine-tuned run against majority, embeddings, a scripted LLM server and another run."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from conftest import NEGATIVE, POSITIVE, toy_recipe, write_csv
from llm_server import Status
from scipy.stats import binomtest

from slingshot.cli import main
from slingshot.compare import compare_run, macro_f1
from slingshot.errors import DataError, RecipeError, RunDirError
from slingshot.llm import LLMError
from slingshot.recipe import CompareSection


@pytest.fixture
def trained_run(toy_trained_run):
    return toy_trained_run


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A private copy of the trained run, so each test writes its own comparison."""
    return shutil.copytree(trained_run, tmp_path / "run")


def sentiment_of(prompt: str) -> str:
    text = prompt.rsplit("Text: ", 1)[1].split("\n")[0]
    words = set(text.split())
    return "pos" if words & set(POSITIVE) else "neg" if words & set(NEGATIVE) else "?"


def options(url: str | None = None, **settings) -> CompareSection:
    base = {"latency_examples": 5, "bootstrap_samples": 300}
    if url is not None:
        base["llm"] = {"base_url": url, "model": "scripted", "max_retries": 1, "timeout_s": 5,
                       "price_input_per_1m_usd": 1.0, "price_output_per_1m_usd": 2.0}
    base.update(settings)
    return CompareSection(**base)


def test_compare_scores_every_system_on_the_same_examples(run_copy, fake_llm, tiny_bert):
    junk = {"pos": "It is definitely positive!", "neg": "The answer is neg"}
    invalid = []

    def reply(request, number):
        answer = sentiment_of(request["messages"][-1]["content"])
        if number % 10 == 0 or (number % 7 == 0 and answer == "pos"):
            invalid.append(number)  # no label, or "positive" which is not the label "pos"
        return "I cannot tell" if number % 10 == 0 else junk[answer] if number % 7 == 0 else answer

    server = fake_llm(reply)
    comparison = compare_run(str(run_copy), options(server.url, embedding_model=str(tiny_bert),
                                                    baselines=["majority", "embedding", "llm"]))
    report = comparison.report
    assert report["examples"] == 40 and len(server.requests) == 40
    names = [row["kind"] for row in report["systems"]]
    assert names == ["fine-tuned", "majority", "embedding", "llm"]

    llm = report["systems"][3]
    assert llm["invalid_answers"] == len(invalid) >= 4
    assert llm["details"]["prompt_tokens"] == 40 * 20 and llm["details"]["completion_tokens"] == 40 * 3
    assert llm["cost_per_1k_usd"] == pytest.approx((20 * 1.0 + 3 * 2.0) / 1e6 * 1000)
    for row in report["systems"]:
        accuracy = row["metrics"]["accuracy"]
        assert accuracy["ci_low"] <= accuracy["value"] <= accuracy["ci_high"]
    assert report["systems"][1]["metrics"]["accuracy"]["value"] == pytest.approx(0.5)

    # the McNemar test, recomputed from the per-example answers written to the disagreements file
    records = [json.loads(line) for line in comparison.paths["disagreements"].read_text().splitlines()]
    ours, theirs = report["systems"][0]["name"], llm["name"]
    only_ours = sum(ours in r["correct"] and theirs not in r["correct"] for r in records)
    only_theirs = sum(theirs in r["correct"] and ours not in r["correct"] for r in records)
    test = report["tests"][2]
    assert (test["only_fine_tuned_correct"], test["only_baseline_correct"]) == (only_ours, only_theirs)
    expected_p = binomtest(only_ours, only_ours + only_theirs, 0.5).pvalue if only_ours + only_theirs else 1.0
    assert test["p_value"] == pytest.approx(min(1.0, expected_p))
    assert test["verdict"] in {"better", "worse", "not distinguishable"}
    assert test["sentence"].startswith("The fine-tuned model")

    markdown = comparison.paths["markdown"].read_text()
    assert "| System |" in markdown and "## Verdicts" in markdown and "scripted (zero-shot)" in markdown


def test_a_rerun_reads_the_llm_cache_and_reproduces_the_numbers(run_copy, fake_llm):
    server = fake_llm(lambda request, number: sentiment_of(request["messages"][-1]["content"]))
    first = compare_run(str(run_copy), options(server.url, baselines=["llm"]))
    sent = len(server.requests)
    second = compare_run(str(run_copy), options(server.url, baselines=["llm"]), force=True)
    assert len(server.requests) == sent
    assert second.report["systems"][1]["metrics"] == first.report["systems"][1]["metrics"]
    assert second.report["systems"][1]["details"]["cached_answers"] == 40


def test_k_shot_prompts_carry_training_examples(run_copy, fake_llm):
    server = fake_llm(lambda request, number: sentiment_of(request["messages"][-1]["content"]))
    report = compare_run(str(run_copy), options(server.url, baselines=["llm"], shots=4)).report
    prompt = server.requests[0]["messages"][-1]["content"]
    assert prompt.count("Label: pos") == 2 and prompt.count("Label: neg") == 2
    assert report["systems"][1]["name"] == "scripted (4-shot)"


def test_rate_limits_and_server_errors_are_retried(run_copy, fake_llm):
    def reply(request, number):
        return Status(429) if number % 3 == 1 else Status(500) if number % 3 == 2 else \
            sentiment_of(request["messages"][-1]["content"])

    server = fake_llm(reply)
    report = compare_run(str(run_copy), options(server.url, baselines=["llm"], limit=10, llm={
        "base_url": server.url, "model": "scripted", "max_retries": 3, "concurrency": 1})).report
    assert report["systems"][1]["invalid_answers"] == 0 and len(server.requests) == 30


def test_failures_after_retries_keep_the_answers_for_the_next_run(run_copy, fake_llm):
    state = {"down": True}

    def reply(request, number):
        answer = sentiment_of(request["messages"][-1]["content"])
        return Status(503, "overloaded") if state["down"] and answer == "neg" else answer

    server = fake_llm(reply)
    with pytest.raises(LLMError, match="20 of 40 requests .* failed"):
        compare_run(str(run_copy), options(server.url, baselines=["llm"]))
    assert not (run_copy / "comparison.json").exists()
    state["down"] = False
    before = len(server.requests)
    report = compare_run(str(run_copy), options(server.url, baselines=["llm"])).report
    assert len(server.requests) - before == 20
    assert report["systems"][1]["details"]["cached_answers"] == 20


def test_another_run_as_baseline_is_indistinguishable_from_itself(run_copy, trained_run):
    report = compare_run(str(run_copy), options(baselines=[str(trained_run)])).report
    assert report["tests"][0]["p_value"] == 1.0 and report["tests"][0]["verdict"] == "not distinguishable"
    assert report["systems"][0]["metrics"] == report["systems"][1]["metrics"]


def test_published_rows_are_marked_not_measured(run_copy):
    published = [{"name": "gpt-3.5-turbo zero-shot", "value": 93.7, "source": "DAMO-NLP-SG/SSTuning"}]
    comparison = compare_run(str(run_copy), options(baselines=["majority"], published=published))
    assert comparison.report["published"][0] == {"name": "gpt-3.5-turbo zero-shot", "metric": "accuracy",
                                                  "value": pytest.approx(0.937), "source": "DAMO-NLP-SG/SSTuning",
                                                  "measured": False}
    assert "published, not measured" in comparison.markdown


def test_labels_the_run_never_saw_are_a_clear_error(run_copy, tmp_path):
    odd = write_csv(tmp_path / "odd.csv", [("good film", "pos"), ("so so", "neutral")])
    with pytest.raises(DataError, match="neutral"):
        compare_run(str(run_copy), options(baselines=["majority"]), data_path=str(odd))


def test_an_existing_comparison_is_not_overwritten(run_copy):
    compare_run(str(run_copy), options(baselines=["majority"]))
    written = (run_copy / "comparison.json").read_text()
    with pytest.raises(RunDirError, match="already has a comparison"):
        compare_run(str(run_copy), options(baselines=["majority"]))
    assert (run_copy / "comparison.json").read_text() == written


def test_unknown_baseline_is_a_clear_error(run_copy):
    with pytest.raises(RecipeError, match="'gpt5' is not a built-in baseline"):
        compare_run(str(run_copy), options(baselines=["gpt5"]))
    with pytest.raises(RecipeError, match="no baselines"):
        compare_run(str(run_copy), options())


def test_cli_compare_prints_the_table_and_errors_in_one_line(run_copy, fake_llm, cli):
    server = fake_llm(lambda request, number: sentiment_of(request["messages"][-1]["content"]))

    code, out, err = cli("compare", run_copy, "--baseline", "majority", "--baseline", "llm",
                         "--set", f"llm.base_url={server.url}", "--set", "llm.model=scripted", "--limit", "10")
    assert code == 0, err
    assert "Verdicts" in out and "comparing on 10 examples" in err
    assert json.loads((run_copy / "comparison.json").read_text())["examples"] == 10
    code, out, err = cli("compare", run_copy, "--baseline", "majority")
    assert code == 2 and "already has a comparison" in err and "--force" in err and "Traceback" not in err


def test_macro_f1_counts_invalid_answers_as_wrong_but_not_as_a_class():
    gold = np.array([0, 0, 1, 1])
    predicted = np.array([0, 2, 1, 1])  # 2 = invalid
    # class 0: tp 1, support 2, predicted 1 -> F1 2/3; class 1: F1 1
    assert macro_f1(predicted, gold, 2) == pytest.approx((2 / 3 + 1) / 2)


def test_structured_output_is_requested_and_malformed_responses_count_as_invalid(run_copy, fake_llm):
    from llm_server import Raw

    def reply(request, number):
        label = sentiment_of(request["messages"][-1]["content"])
        return Raw(b"<html>gateway</html>") if number <= 3 else json.dumps({"label": label})

    server = fake_llm(reply)
    report = compare_run(str(run_copy), options(server.url, baselines=["llm"], answer_format="json_schema",
                                                limit=12, llm={"base_url": server.url, "model": "scripted",
                                                               "concurrency": 1})).report
    assert server.requests[0]["response_format"]["json_schema"]["schema"]["properties"]["label"]["enum"] == \
        ["neg", "pos"]
    llm = report["systems"][1]
    assert llm["invalid_answers"] == 3 and llm["details"]["malformed_responses"] == 3


def test_run_compares_after_training_when_the_recipe_asks(tmp_path, tiny_bert, toy_data, capsys, monkeypatch):
    import yaml

    raw = toy_recipe(tmp_path, tiny_bert, toy_data, epochs=1)
    raw["compare"] = {"baselines": ["majority"], "latency_examples": 3, "bootstrap_samples": 200}
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(yaml.safe_dump(raw), encoding="utf-8")
    monkeypatch.setattr(sys, "argv", ["slingshot", "run", str(recipe)])
    try:
        main()
    except SystemExit as exit_:
        assert not exit_.code, capsys.readouterr().err
    report = json.loads((tmp_path / "runs" / "toy" / "comparison.json").read_text())
    assert [row["kind"] for row in report["systems"]] == ["fine-tuned", "majority"]


# ---------------------------------------------------------------------------------------------------- extractive QA


def positive_word(prompt: str) -> str:
    context = prompt.split("Context: ", 1)[1].split("\n\nQuestion:")[0]
    return next((word for word in context.split() if word in POSITIVE), "")


@pytest.fixture
def qa_run_copy(qa_trained_run, tmp_path, tiny_bert):
    """A private copy of the QA run whose recipe scores answer similarity with the tiny BERT."""
    import yaml

    run = shutil.copytree(qa_trained_run, tmp_path / "qa-run")
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["similarity"] = {**recipe.get("similarity", {}), "enabled": True, "model": str(tiny_bert)}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return run


def test_qa_runs_compare_on_f1_with_the_first_sentence_an_llm_and_another_run(qa_run_copy, qa_trained_run,
                                                                             fake_llm):
    from slingshot.compare_answers import clean_answer, per_question

    def reply(request, number):  # right, quoted, empty (invalid) or a wrong span
        word = positive_word(request["messages"][-1]["content"])
        return [word, f'Answer: "{word}"', "", "the movie"][number % 4]

    server = fake_llm(reply)
    comparison = compare_run(str(qa_run_copy), options(server.url, baselines=["first_sentence", "llm",
                                                                                str(qa_trained_run)]))
    report = comparison.report
    assert report["primary_metric"] == "f1" and report["examples"] == 40 and len(server.requests) == 40
    assert [row["kind"] for row in report["systems"]] == ["fine-tuned", "first_sentence", "llm", "run"]
    ours, first, llm, same = report["systems"]
    assert ours["metrics"]["f1"]["value"] >= 0.8 and first["metrics"]["f1"]["value"] < 0.3
    for row in report["systems"]:
        for metric in ("f1", "exact_match", "similarity", "acceptable"):
            value = row["metrics"][metric]
            assert value["ci_low"] <= value["value"] <= value["ci_high"], (row["name"], metric)
    assert llm["invalid_answers"] == 10  # the empty replies
    # the LLM's F1, recomputed from what the server answered
    answers = [clean_answer(reply(r, n)) for n, r in enumerate(server.requests, start=1)]  # the server counts from 1
    assert clean_answer('Answer: "great"') == "great" and clean_answer("") is None
    golds = [[positive_word(r["messages"][-1]["content"])] for r in server.requests]
    assert llm["metrics"]["f1"]["value"] == pytest.approx(per_question(answers, golds)[1].mean())
    assert llm["metrics"]["f1"]["value"] == pytest.approx(0.5)
    tests = {test["baseline"]: test for test in report["tests"]}
    assert tests[first["name"]]["verdict"] == "better" and tests[first["name"]]["test"] == "paired bootstrap (F1)"
    assert tests[same["name"]]["verdict"] == "not distinguishable" and tests[same["name"]]["agreement"] == 1.0
    assert "F1" in tests[first["name"]]["sentence"]
    records = [json.loads(line) for line in comparison.paths["disagreements"].read_text().splitlines()]
    assert records and all(isinstance(r["gold"], list) for r in records)
    assert all((ours["name"] in r["correct"]) == (r["answers"][ours["name"]] in r["gold"]) for r in records)
    markdown = comparison.paths["markdown"].read_text()
    assert "| System | f1 (95% CI) | exact_match (95% CI)" in markdown and "mean similarity" in markdown


def test_baselines_that_do_not_fit_the_task_are_a_clear_error(qa_run_copy, run_copy, generation_trained_run):
    with pytest.raises(RecipeError, match="baseline 'majority' does not answer extractive_qa examples"):
        compare_run(str(qa_run_copy), options(baselines=["majority"]))
    with pytest.raises(RecipeError, match="baseline 'first_sentence' answers questions"):
        compare_run(str(run_copy), options(baselines=["first_sentence"]))
    with pytest.raises(RecipeError, match="is a classification run"):
        compare_run(str(qa_run_copy), options(baselines=[str(run_copy)]))
    with pytest.raises(RecipeError, match="baseline 'first_sentence' does not answer generation examples"):
        compare_run(str(generation_trained_run), options(baselines=["first_sentence"]))


def test_a_generation_run_compares_with_an_llm_asked_the_same_conversation(generation_trained_run, tmp_path,
                                                                           fake_llm):
    from conftest import qa_pairs

    answers = {pair["prompt"]: pair["completion"] for pair in qa_pairs()}

    def reply(request, number):  # right for even-numbered requests, a wrong answer otherwise
        asked = request["messages"][-1]["content"]
        return answers[asked] if number % 2 == 0 else "purple walrus"

    server = fake_llm(reply)
    run = shutil.copytree(generation_trained_run, tmp_path / "gen-run")
    comparison = compare_run(str(run), options(server.url, baselines=["llm"]))
    report = comparison.report
    assert [m["role"] for m in server.requests[0]["messages"]] == ["user"]  # the conversation, not a QA prompt
    ours, llm = report["systems"]
    assert llm["name"] == "scripted (same conversation)" and report["examples"] == 20
    assert ours["metrics"]["exact_match"]["value"] == pytest.approx(1.0)  # it memorised them
    assert llm["metrics"]["exact_match"]["value"] == pytest.approx(0.5)
    assert {"f1", "exact_match", "rouge_l"} <= set(llm["metrics"])
    assert report["tests"][0]["verdict"] == "better"


def test_a_qa_run_compares_on_a_labelled_file_given_with_data(qa_run_copy):
    import yaml

    dev = yaml.safe_load((qa_run_copy / "recipe.yaml").read_text())["data"]["eval"]
    report = compare_run(str(qa_run_copy), options(baselines=["first_sentence"], limit=10), data_path=dev).report
    assert report["examples"] == 10 and report["source"] == dev
    assert report["systems"][0]["metrics"]["f1"]["value"] > report["systems"][1]["metrics"]["f1"]["value"]
