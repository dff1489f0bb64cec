"""`slingshot soup`: the weighted mean of runs' weights becomes a new, scored run; runs that cannot be averaged are
one clear error and nothing is written."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import toy_recipe, toy_rows, write_csv
from safetensors.torch import load_file

from slingshot.errors import SlingshotError
from slingshot.model_soup import soup
from slingshot.recipe import recipe_from_dict
from slingshot.train import train


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_bert):
    """Two finished toy-sentiment runs of the tiny BERT that differ only in their seed (both learn the task)."""
    folder = tmp_path_factory.mktemp("soup-runs")
    data = {"train": write_csv(folder / "train.csv", toy_rows(160, seed=1)),
            "eval": write_csv(folder / "dev.csv", toy_rows(40, seed=2))}
    runs = []
    for seed in (0, 1):
        raw = toy_recipe(folder, tiny_bert, data, epochs=8, seed=seed)
        raw["name"] = f"toy-s{seed}"
        runs.append(train(recipe_from_dict(raw, folder), show_progress=False).run.path)
    return runs


def weights_of(run):
    return load_file(str(run / "model" / "model.safetensors"))


def test_a_soup_is_the_weighted_mean_of_its_runs_and_a_finished_scored_run(two_runs, tmp_path):
    from transformers import pipeline

    a, b = two_runs
    result = soup([a, b], "mix", root=tmp_path, weights=[3, 1])
    wa, wb, mixed = weights_of(a), weights_of(b), weights_of(result.run.path)
    assert wa.keys() == mixed.keys()
    for key, value in mixed.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.75 * wa[key] + 0.25 * wb[key])
        else:
            assert torch.equal(value, wa[key])
    assert not torch.equal(wa["classifier.weight"], wb["classifier.weight"])  # the seeds made different runs

    run = result.run.path
    assert (run / "summary.json").is_file() and (run / "recipe.yaml").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["soup_of"] == [str(a), str(b)] and metrics["weights"] == [0.75, 0.25]
    assert 0.0 <= metrics["eval"]["accuracy"] <= 1.0 and metrics["eval"]["examples"] == 40
    assert len((run / "predictions.jsonl").read_text().splitlines()) == 40
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "soup" and [m["weight"] for m in summary["soup_of"]] == [0.75, 0.25]
    members = [json.loads((r / "summary.json").read_text()) for r in two_runs]
    assert summary["train_time_s"] == pytest.approx(sum(m["train_time_s"] for m in members), abs=0.02)
    classify = pipeline("text-classification", model=str(run / "model"))
    labels = json.loads((a / "model" / "config.json").read_text())["id2label"].values()
    assert classify("a wonderful film")[0]["label"] in set(labels)


def test_a_soup_is_compared_and_reported_like_a_trained_run(two_runs, tmp_path):
    from slingshot.compare import compare_run
    from slingshot.recipe import CompareSection
    from slingshot.report import build_report

    run = soup(two_runs, "shown", root=tmp_path).run.path
    comparison = compare_run(str(run), CompareSection(baselines=["majority", str(two_runs[0])], latency_examples=2,
                                                      bootstrap_samples=100))
    assert [system["kind"] for system in comparison.report["systems"]][1:] == ["majority", "run"]
    page = build_report(str(run)).read_text(encoding="utf-8")  # a soup has no training log: the page still builds
    assert "shown" in page and "accuracy" in page


def test_a_soup_of_a_run_and_its_copy_scores_as_the_run(two_runs, tmp_path):
    a = two_runs[0]
    copy = shutil.copytree(a, tmp_path / "copy")
    result = soup([a, copy], "same", root=tmp_path)
    for key, value in weights_of(result.run.path).items():
        torch.testing.assert_close(value, weights_of(a)[key])
    trained = json.loads((a / "metrics.json").read_text())["eval"]
    assert result.metrics["eval"]["accuracy"] == trained["accuracy"]
    assert result.metrics["eval"]["loss"] == pytest.approx(trained["loss"], rel=1e-4)


def test_a_greedy_soup_keeps_the_runs_that_do_not_lower_the_eval_score(two_runs, tmp_path, cli):
    from safetensors.torch import save_file

    a, b = two_runs
    spoiled = shutil.copytree(a, tmp_path / "spoiled")  # its head points the other way: it only drags a soup down
    weights = weights_of(spoiled)
    weights["classifier.weight"] *= -10
    weights["classifier.bias"] *= -10
    save_file(weights, str(spoiled / "model" / "model.safetensors"), metadata={"format": "pt"})

    code, out, err = cli("soup", spoiled, a, b, "--greedy", "--name", "greedy", "--out", tmp_path)
    assert code == 0, err
    assert "left out" in out and "spoiled" in out
    run = tmp_path / "greedy"
    metrics = json.loads((run / "metrics.json").read_text())
    search = metrics["greedy"]
    assert search["metric"] == "accuracy" and search["split"] == "eval"
    alone = [entry["accuracy"] for entry in search["runs"]]
    assert alone == sorted(alone, reverse=True) and search["runs"][-1]["run"] == str(spoiled)
    assert [step["kept"] for step in search["steps"] if step["added"] == str(spoiled)] == [False]
    kept = [Path(path) for path in metrics["soup_of"]]
    assert str(spoiled) not in metrics["soup_of"] and kept[0] == Path(search["runs"][0]["run"])
    assert metrics["weights"] == pytest.approx([1 / len(kept)] * len(kept))
    assert metrics["eval"]["accuracy"] == search["accuracy"] >= max(alone)  # scored the same way as in the search
    for key, value in weights_of(run).items():
        if value.is_floating_point():
            torch.testing.assert_close(value, sum(weights_of(path)[key] for path in kept) / len(kept))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["candidates"] == [str(spoiled), str(a), str(b)]
    from slingshot.report import build_report

    page = build_report(str(run)).read_text(encoding="utf-8")  # the page shows what was kept and what left out
    assert "Greedy soup" in page and "left out" in page and str(spoiled) in page
    members = [json.loads((r / "summary.json").read_text()) for r in (spoiled, a, b)]
    assert summary["train_time_s"] == pytest.approx(sum(m["train_time_s"] for m in members), abs=0.03)

    one_line_error(*cli("soup", a, b, "--greedy", "--weight", "1", "--weight", "2", "--name", "no",
                        "--out", tmp_path)[::2], "greedy", "--weight")
    assert not (tmp_path / "no").exists()

    by_loss = shutil.copytree(a, tmp_path / "by-loss")  # the first run's train.metric decides, lower-is-better too
    recipe = yaml.safe_load((by_loss / "recipe.yaml").read_text())
    recipe["train"]["metric"] = "loss"
    (by_loss / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    search = soup([by_loss, spoiled, b], "greedy-loss", root=tmp_path, greedy=True).metrics["greedy"]
    losses = [entry["loss"] for entry in search["runs"]]
    assert search["metric"] == "loss" and losses == sorted(losses) and search["runs"][-1]["run"] == str(spoiled)
    assert search["loss"] <= losses[0]


def test_a_qa_soup_is_scored_on_em_f1_and_answer_similarity(qa_trained_run, tmp_path):
    copy = shutil.copytree(qa_trained_run, tmp_path / "qa-copy")
    result = soup([qa_trained_run, copy], "qa-soup", root=tmp_path)
    trained = json.loads((qa_trained_run / "metrics.json").read_text())["eval"]
    assert result.metrics["eval"]["f1"] == pytest.approx(trained["f1"])
    assert result.metrics["eval"]["exact_match"] == pytest.approx(trained["exact_match"])
    assert ("similarity" in result.metrics["eval"]) == ("similarity" in trained)


@pytest.fixture(scope="module")
def two_adapters(tmp_path_factory, tiny_llama):
    """Two LoRA generation runs of the tiny Llama (adapters only) that differ in their seed."""
    from conftest import qa_pairs, write_jsonl
    from test_generation import gen_recipe

    folder = tmp_path_factory.mktemp("soup-adapters")
    data = write_jsonl(folder / "qa.jsonl", qa_pairs())
    runs = []
    for seed in (0, 1):
        recipe = gen_recipe(folder / f"s{seed}", tiny_llama, data, method="lora", lr=1e-2, epochs=30, seed=seed)
        runs.append(train(recipe, show_progress=False).run.path)
    return runs


def merged_weights(model_folder):
    from slingshot.tasks.generation import load_adapter_model

    return load_adapter_model(model_folder).merge_and_unload().state_dict()


def test_a_soup_of_lora_adapters_is_one_adapter_whose_update_is_the_mean_of_theirs(two_adapters, tmp_path):
    a, b = two_adapters
    result = soup([a, b], "adapters", root=tmp_path, weights=[3, 1])
    model = result.run.path / "model"
    assert not (model / "model.safetensors").exists()  # still an adapter, megabytes
    rank = json.loads((a / "model" / "adapter_config.json").read_text())["r"]
    config = json.loads((model / "adapter_config.json").read_text())
    assert config["r"] == 2 * rank and config["lora_alpha"] == 2 * rank
    saved = load_file(str(model / "adapter_model.safetensors"))
    assert saved and all("lora_" in key and "member" not in key for key in saved)  # one adapter, saved as PEFT names it
    mixed, wa, wb = merged_weights(model), merged_weights(a / "model"), merged_weights(b / "model")
    assert any(not torch.equal(wa[key], wb[key]) for key in wa)  # the seeds made different adapters
    for key, value in mixed.items():  # base + the mean of the updates = the mean of the merged models
        torch.testing.assert_close(value, 0.75 * wa[key] + 0.25 * wb[key], atol=1e-6, rtol=1e-5)
    assert "exact_match" in result.metrics["eval"] and (result.run.path / "predictions.jsonl").is_file()

    greedy = soup([a, b], "adapters-greedy", root=tmp_path, greedy=True)  # candidates written and scored as adapters
    assert greedy.metrics["greedy"]["metric"] == "exact_match"
    assert greedy.metrics["eval"]["exact_match"] >= max(r["exact_match"] for r in greedy.metrics["greedy"]["runs"])


def test_adapters_that_cannot_be_summed_exactly_are_one_clear_error(two_adapters, two_runs, tmp_path, cli):
    a, b = two_adapters
    one_line_error(*cli("soup", a, two_runs[0], "--out", tmp_path)[::2], "keeps a LoRA adapter", "full weights",
                   "--merge")
    for name, change, fragment in (("dora", {"use_dora": True}, "use_dora"),
                                   ("rslora", {"use_rslora": True}, "use_rslora"),
                                   ("other-base", {"base_model_name_or_path": "gpt2"}, "base_model_name_or_path")):
        other = shutil.copytree(b, tmp_path / name)
        path = other / "model" / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
        one_line_error(*cli("soup", a, other, "--name", f"no-{name}", "--out", tmp_path)[::2], fragment)
        assert not (tmp_path / f"no-{name}").exists()


def test_the_soup_command_writes_and_prints_the_scores(two_runs, tmp_path, cli):
    code, out, err = cli("soup", *two_runs, "--name", "cli-soup", "--out", tmp_path, "--json")
    assert code == 0, err
    reply = json.loads(out)
    assert reply["run"] == str(tmp_path / "cli-soup") and "accuracy" in reply["metrics"]["eval"]


def one_line_error(code, err, *fragments):
    assert code == 2 and "Traceback" not in err
    assert err.startswith("error: ")
    for fragment in fragments:
        assert fragment in err


def test_runs_that_cannot_be_averaged_are_one_clear_error_and_nothing_is_written(two_runs, qa_trained_run,
                                                                                   tmp_path, cli):
    a, b = two_runs
    one_line_error(*cli("soup", a, "--out", tmp_path)[::2], "at least two runs")
    one_line_error(*cli("soup", a, a, "--out", tmp_path)[::2], "named twice")
    one_line_error(*cli("soup", a, qa_trained_run, "--out", tmp_path)[::2], "task extractive_qa, not classification")
    one_line_error(*cli("soup", a, b, "--weight", "1", "--out", tmp_path)[::2], "1 weights for 2 runs")
    one_line_error(*cli("soup", a, b, "--weight", "1", "--weight", "0", "--out", tmp_path)[::2], "positive")
    one_line_error(*cli("soup", a, tmp_path / "missing", "--out", tmp_path)[::2], "not found")

    relabelled = shutil.copytree(b, tmp_path / "relabelled")
    config = json.loads((relabelled / "model" / "config.json").read_text())
    config["id2label"] = {"0": "bad", "1": "good"}
    config["label2id"] = {"bad": 0, "good": 1}
    (relabelled / "model" / "config.json").write_text(json.dumps(config))
    one_line_error(*cli("soup", a, relabelled, "--out", tmp_path)[::2], "labels differ")

    unfinished = shutil.copytree(b, tmp_path / "unfinished")
    (unfinished / "summary.json").unlink()
    one_line_error(*cli("soup", a, unfinished, "--out", tmp_path)[::2], "not finished")

    adapter = shutil.copytree(b, tmp_path / "adapter")
    (adapter / "model" / "adapter_config.json").write_text("{}")
    one_line_error(*cli("soup", a, adapter, "--out", tmp_path)[::2], "LoRA adapter", "--merge")

    one_line_error(*cli("soup", a, b, "--name", a.name, "--out", a.parent, "--overwrite")[::2], "one of the runs")
    one_line_error(*cli("soup", a, b, "--name", a.parent.name, "--out", a.parent.parent, "--overwrite")[::2],
                   "holds one of the runs")
    one_line_error(*cli("soup", a, b, "--name", "", "--out", a.parent, "--overwrite")[::2], "folder name")
    assert (a / "summary.json").is_file() and (b / "summary.json").is_file()
    assert not (tmp_path / "toy-s0-soup").exists()

    moved = shutil.copytree(a, tmp_path / "moved-data")
    recipe = yaml.safe_load((moved / "recipe.yaml").read_text())
    recipe["data"]["eval"] = str(tmp_path / "gone.csv")  # the data it was scored on has moved since
    (moved / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    one_line_error(*cli("soup", moved, b, "--name", "no-data", "--out", tmp_path)[::2], "gone.csv")
    assert not (tmp_path / "no-data").exists()

    # a finished soup is never replaced without --overwrite
    assert cli("soup", a, b, "--name", "kept", "--out", tmp_path)[0] == 0
    before = (tmp_path / "kept" / "metrics.json").read_text()
    one_line_error(*cli("soup", a, b, "--name", "kept", "--out", tmp_path, "--weight", "2", "--weight", "1")[::2],
                   "already holds a finished run", "--overwrite", "--name")
    assert (tmp_path / "kept" / "metrics.json").read_text() == before
    assert cli("soup", a, b, "--name", "kept", "--out", tmp_path, "--weight", "2", "--weight", "1",
               "--overwrite")[0] == 0
    assert json.loads((tmp_path / "kept" / "metrics.json").read_text())["weights"] == pytest.approx([2 / 3, 1 / 3])


def test_the_python_api_soups_runs_and_raises_slingshot_errors(two_runs, tmp_path):
    import slingshot

    run = slingshot.soup([slingshot.load(two_runs[0]), two_runs[1]], "api-soup", root=tmp_path)
    assert run.metrics["soup_of"] == [str(p) for p in two_runs]
    assert run.predict(["a wonderful film"])[0]["predicted"] in set(run.metrics["eval"]["labels"])
    greedy = slingshot.soup(two_runs, "api-greedy", root=tmp_path, greedy=True)
    assert greedy.metrics["greedy"]["metric"] == "accuracy" and len(greedy.metrics["greedy"]["runs"]) == 2
    with pytest.raises(SlingshotError, match="at least two runs"):
        soup([two_runs[0]], root=tmp_path)
