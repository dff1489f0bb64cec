import json
from collections import Counter

import numpy as np
import pytest
from conftest import toy_recipe

from slingshot.curve import (
    Size,
    parse_sizes,
    reference_from,
    run_curve,
    sample_indices,
    sort_sizes,
    stratified_order,
    summarise,
)
from slingshot.errors import RecipeError, RunDirError
from slingshot.recipe import recipe_from_dict

LABELS = [0] * 500 + [1] * 300 + [2] * 200  # imbalanced: 50% / 30% / 20%


def samples(labels, sizes, seed):
    order, rank = stratified_order(labels, seed, per_class_up_to=64)
    return {size.label: sample_indices(order, rank, size) for size in sizes}


# ------------------------------------------------------------------------------------------- sampling


def test_sizes_are_per_class_up_to_the_limit_then_totals():
    sizes = parse_sizes([8, "64", 65, 1000, "all"], per_class_up_to=64)
    assert sizes == [Size("8", per_class=8), Size("64", per_class=64), Size("65", total=65),
                     Size("1000", total=1000), Size("all")]


def test_bad_sizes_are_refused_with_a_hint():
    with pytest.raises(RecipeError, match="not a positive whole number"):
        parse_sizes(["eight"], 64)
    with pytest.raises(RecipeError, match="repeat"):
        parse_sizes([8, "8"], 64)


def test_per_class_samples_hold_exactly_that_many_of_each_class():
    labels = np.array(LABELS)
    drawn = samples(LABELS, parse_sizes([2, 8, 64], 64), seed=0)
    for size in (2, 8, 64):
        assert Counter(labels[drawn[str(size)]].tolist()) == {0: size, 1: size, 2: size}


def test_total_samples_are_balanced_up_to_the_limit_then_stratified():
    labels = np.array(LABELS)
    drawn = samples(LABELS, parse_sizes([150, 692, "all"], 64), seed=0)
    assert Counter(labels[drawn["150"]].tolist()) == {0: 50, 1: 50, 2: 50}  # balanced below 3 x 64
    counts = Counter(labels[drawn["692"]].tolist())  # 3 x 64, then 500 spread as the rest of each class
    assert counts[0] == pytest.approx(64 + 500 * 436 / 808, abs=2)
    assert counts[2] == pytest.approx(64 + 500 * 136 / 808, abs=2)
    assert len(drawn["all"]) == len(LABELS)


def test_samples_are_nested_across_sizes():
    sizes = sort_sizes(parse_sizes([8, 2, 64, 32, 100, 256, 700, "all"], 64), [500, 300, 200])
    assert [s.label for s in sizes] == ["2", "8", "32", "100", "64", "256", "700", "all"]  # 100 < 3 x 64
    for seed in (0, 1, 2):
        drawn = samples(LABELS, sizes, seed)
        for smaller, larger in zip(sizes, sizes[1:]):
            assert set(drawn[smaller.label]) <= set(drawn[larger.label]), (seed, smaller, larger)


def test_seeds_draw_other_samples_and_the_same_seed_the_same_one():
    sizes = parse_sizes([8, 256], 64)
    first, again, other = samples(LABELS, sizes, 0), samples(LABELS, sizes, 0), samples(LABELS, sizes, 1)
    for size in ("8", "256"):
        assert np.array_equal(first[size], again[size])
        assert not np.array_equal(first[size], other[size])


# ------------------------------------------------------------------------------------------- summary


def point(method, size, seed, value, examples, per_class=True):
    return {"method": method, "size": size, "per_class": per_class, "seed": seed, "metric": value,
            "examples": examples, "train_time_s": 1.0}


def test_summary_gives_mean_std_and_the_smallest_size_within_tolerance(tmp_path):
    recipe = recipe_from_dict({"curve": {"tolerance": 0.02}})
    sizes = parse_sizes([8, 64, 1000], 64)
    points = [point("fewshot", "8", s, v, 16) for s, v in enumerate([0.80, 0.84])] + \
             [point("fewshot", "64", s, v, 128) for s, v in enumerate([0.88, 0.90])] + \
             [point("fewshot", "1000", s, v, 1000, False) for s, v in enumerate([0.90, 0.90])] + \
             [point("full", "8", s, v, 16) for s, v in enumerate([0.50, 0.60])]
    summary = summarise(points, sizes, ["fewshot", "full"], recipe, None)
    first = summary["rows"][0]
    assert (first["mean"], first["std"]) == (pytest.approx(0.82), pytest.approx(np.std([0.80, 0.84], ddof=1)))
    assert summary["reference"]["value"] == pytest.approx(0.90)
    assert summary["enough"]["fewshot"]["size"] == "64"  # 0.89 is within 0.02 of 0.90; 0.82 is not
    assert summary["enough"]["full"] is None
    with_baseline = summarise(points, sizes, ["fewshot"], recipe, {"name": "llm", "value": 0.83})
    assert with_baseline["enough"]["fewshot"]["size"] == "8"


def test_baseline_reference_comes_from_a_number_or_a_comparison(tmp_path):
    recipe = recipe_from_dict({})
    assert reference_from("93.7", recipe)["value"] == pytest.approx(0.937)
    report = {"systems": [
        {"name": "fine-tuned x", "kind": "fine-tuned", "metrics": {"accuracy": {"value": 0.95}}},
        {"name": "majority", "kind": "majority", "metrics": {"accuracy": {"value": 0.5}}},
        {"name": "llm gpt-4o-mini", "kind": "llm", "metrics": {"accuracy": {"value": 0.91}}},
    ]}
    (tmp_path / "comparison.json").write_text(json.dumps(report))
    assert reference_from(str(tmp_path), recipe)["value"] == 0.91  # the best baseline, never the fine-tuned run
    assert reference_from(f"{tmp_path}/comparison.json#majority", recipe)["value"] == 0.5
    with pytest.raises(RecipeError, match="no baseline system matching gemini"):
        reference_from(f"{tmp_path}#gemini", recipe)


# ------------------------------------------------------------------------------------------- the sweep


def curve_recipe(tmp_path, tiny_bert, toy_data, **curve):
    raw = toy_recipe(tmp_path, tiny_bert, toy_data, epochs=2)
    raw["curve"] = {"sizes": [4, 8], "methods": ["full"], "seeds": 2, **curve}
    return recipe_from_dict(raw)


def test_an_interrupted_sweep_resumes_where_it_stopped(tmp_path, tiny_bert, toy_data):
    recipe = curve_recipe(tmp_path, tiny_bert, toy_data)
    started = []

    def stop_after_two(kind, info):
        if kind == "start":
            started.append((info["size"], info["seed"]))
        if kind == "done" and len(started) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_curve(recipe, on_event=stop_after_two)
    folder = tmp_path / "runs" / "toy-curve"
    assert len((folder / "points.jsonl").read_text().splitlines()) == 2
    assert started == [("4", 0), ("4", 1)]

    events = []
    result = run_curve(recipe, on_event=lambda kind, info: events.append((kind, info)))
    assert events[0] == ("plan", {"total": 4, "done": 2})
    assert [(i["size"], i["seed"]) for kind, i in events if kind == "start"] == [("8", 0), ("8", 1)]
    points = [json.loads(line) for line in (folder / "points.jsonl").read_text().splitlines()]
    assert sorted((p["size"], p["seed"]) for p in points) == [("4", 0), ("4", 1), ("8", 0), ("8", 1)]
    assert {p["examples"] for p in points if p["size"] == "8"} == {16}
    assert [row["seeds"] for row in result.summary["rows"]] == [2, 2]
    for name in ("curve.json", "curve.md", "curve.png"):
        assert (folder / name).is_file()
    assert (folder / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert not (folder / "runs" / "full-4-seed0" / "model").exists()  # models are not kept by default


def test_a_finished_but_unrecorded_point_is_recorded_without_training_again(tmp_path, tiny_bert, toy_data):
    recipe = curve_recipe(tmp_path, tiny_bert, toy_data, sizes=[4], seeds=1)
    run_curve(recipe)
    folder = tmp_path / "runs" / "toy-curve"
    summary = folder / "runs" / "full-4-seed0" / "summary.json"
    written = summary.stat().st_mtime_ns
    (folder / "points.jsonl").write_text("")  # as if the process died between finishing and recording
    result = run_curve(recipe)
    assert summary.stat().st_mtime_ns == written
    assert len(result.points) == 1


def test_a_sweep_folder_of_another_recipe_is_not_overwritten(tmp_path, tiny_bert, toy_data):
    run_curve(curve_recipe(tmp_path, tiny_bert, toy_data, sizes=[4], seeds=1))
    other = curve_recipe(tmp_path, tiny_bert, toy_data, sizes=[4], seeds=1)
    other.train.lr = 1e-3
    with pytest.raises(RunDirError, match="another recipe"):
        run_curve(other)
    result = run_curve(other, overwrite=True)
    assert len(result.points) == 1


def test_curve_cli_trains_fewshot_and_full_and_prints_the_table(tmp_path, tiny_bert, toy_data, monkeypatch):
    import yaml
    from typer.testing import CliRunner

    from slingshot.cli import app

    raw = toy_recipe(tmp_path, tiny_bert, toy_data)
    raw["train"]["fewshot"] = {"lr": 3e-3, "pair_iterations": 2}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["curve", str(path), "--sizes", "2,4", "--methods", "fewshot,full",
                                      "--seeds", "1", "--out", str(tmp_path / "sweep")])
    assert result.exit_code == 0, result.output
    assert "Learning curve" in result.output
    summary = json.loads((tmp_path / "sweep" / "curve.json").read_text())
    assert {(row["method"], row["size"]) for row in summary["rows"]} == {
        ("fewshot", "2"), ("fewshot", "4"), ("full", "2"), ("full", "4")}
    help_text = CliRunner().invoke(app, ["curve", "--help"]).output
    assert "slingshot curve examples/sst2/recipe.yaml --sizes" in help_text
