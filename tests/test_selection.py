"""`slingshot select`: uncertainty, diversity and mixed picks, on hand-made cases and on a tiny trained run."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import toy_recipe, toy_rows, write_csv

from slingshot.errors import DataError, RunDirError
from slingshot.recipe import SelectSection, recipe_from_dict
from slingshot.selection import (
    choose,
    k_center_greedy,
    select_file,
    text_key,
    uncertainty,
)
from slingshot.train import train


def test_uncertainty_picks_the_texts_the_model_is_least_sure_of():
    probabilities = np.array([[0.99, 0.01], [0.52, 0.48], [0.80, 0.20], [0.45, 0.55], [0.05, 0.95], [0.70, 0.30]])
    picks, scores = choose(probabilities, np.eye(6), SelectSection(n=3, strategy="uncertainty"))
    assert picks == [1, 3, 5]  # margins 0.04, 0.10, 0.40: the three closest calls
    assert scores[1] == pytest.approx(0.96) and scores[0] == pytest.approx(0.02)
    three = np.array([[0.34, 0.33, 0.33], [0.6, 0.39, 0.01], [0.9, 0.05, 0.05]])
    # margin and entropy can disagree: row 1 has a small margin but a low entropy
    assert list(np.argsort(-uncertainty(three, "entropy"))) == [0, 1, 2]
    assert uncertainty(three, "entropy")[0] == pytest.approx(-sum(p * np.log(p) for p in (0.34, 0.33, 0.33)))


def test_diversity_never_picks_two_identical_texts():
    rng = np.random.default_rng(0)
    distinct = rng.normal(size=(6, 8))
    embeddings = np.repeat(distinct, 5, axis=0)  # every text five times over
    picks = k_center_greedy(embeddings, 6)
    assert len({tuple(embeddings[i]) for i in picks}) == 6
    # farthest first: with a labelled centre at text 0, no copy of text 0 is picked before the others are
    picks = k_center_greedy(embeddings, 5, centres=distinct[:1])
    assert all(i // 5 != 0 for i in picks)


def test_mixed_picks_diverse_texts_among_the_most_uncertain():
    # rows 0-3 are unsure but two pairs of near-twins; rows 4-7 are sure
    probabilities = np.array([[0.5, 0.5], [0.51, 0.49], [0.48, 0.52], [0.49, 0.51]] + [[0.99, 0.01]] * 4)
    embeddings = np.array([[1, 0], [1, 0.01], [0, 1], [0.01, 1]] + [[1, 1]] * 4, dtype=float)
    picks, _ = choose(probabilities, embeddings, SelectSection(n=2, strategy="mixed", mixed_pool_factor=2))
    assert sorted(np.array(picks) // 2) == [0, 1]  # one of each twin pair, both unsure


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_bert):
    folder = tmp_path_factory.mktemp("select")
    data = {"train": write_csv(folder / "train.csv", toy_rows(80, seed=1)),
            "eval": write_csv(folder / "dev.csv", toy_rows(20, seed=2))}
    return train(recipe_from_dict(toy_recipe(folder, tiny_bert, data, epochs=4), folder), show_progress=False).run.path


@pytest.fixture
def pool(tmp_path):
    new = [text for text, _ in toy_rows(40, seed=7)]
    known = [text for text, _ in toy_rows(80, seed=1)][:5]  # already in the run's training data
    twins = [new[0].upper(), "  " + new[1] + "  ", new[2]]  # the same texts, case and spacing aside
    rows = [(f"id{i}", text) for i, text in enumerate(new + known + twins)]
    return write_csv(tmp_path / "pool.csv", rows, header=("id", "text"))


@pytest.mark.parametrize("strategy", ["uncertainty", "diverse", "mixed"])
def test_select_writes_unique_new_texts_with_their_scores(trained_run, pool, tmp_path, strategy):
    output = tmp_path / f"picks-{strategy}.csv"
    selection = select_file(str(trained_run), str(pool), SelectSection(n=30, strategy=strategy), output=str(output))
    with output.open(encoding="utf-8") as handle:
        picks = list(csv.DictReader(handle))
    assert len(picks) == 30 and [int(p["pick"]) for p in picks] == list(range(1, 31))
    assert len({text_key(p["text"]) for p in picks}) == 30
    training = {text_key(text) for text, _ in toy_rows(80, seed=1)}
    assert not training & {text_key(p["text"]) for p in picks}
    assert set(picks[0]) == {"id", "text", "predicted", "probability", "uncertainty_margin", "pick"}
    report = selection.report
    assert report["already_labelled"] == 5 and report["duplicates_dropped"] == 3 and report["candidates"] == 40
    if strategy == "uncertainty":
        margins = [float(p["uncertainty_margin"]) for p in picks]
        assert margins == sorted(margins, reverse=True)
        assert report["mean_uncertainty_picked"] >= report["mean_uncertainty_pool"]


def test_select_refuses_an_existing_output_and_an_exhausted_pool(trained_run, tmp_path):
    known = write_csv(tmp_path / "known.csv", toy_rows(80, seed=1)[:10])
    with pytest.raises(DataError, match="no text left to pick .* 10 already labelled"):
        select_file(str(trained_run), str(known), SelectSection(n=5), output=str(tmp_path / "x.csv"))
    taken = tmp_path / "taken.csv"
    taken.write_text("keep me")
    with pytest.raises(RunDirError, match="not overwritten"):
        select_file(str(trained_run), str(known), SelectSection(n=5), output=str(taken))
    assert taken.read_text() == "keep me"


def test_cli_select_picks_and_errors_in_one_line(trained_run, pool, tmp_path, cli):
    code, out, _ = cli("select", "--help")
    assert code == 0 and "Example" in out
    output = tmp_path / "picks.jsonl"
    code, out, err = cli("select", trained_run, "--input", pool, "--n", "7", "--strategy", "mixed",
                         "--set", "uncertainty=entropy", "--output", output)
    assert code == 0, err
    assert "picked 7 of 40" in out and len(output.read_text().splitlines()) == 7
    code, out, err = cli("select", trained_run, "--input", pool, "--strategy", "random")
    assert code == 2 and "select.strategy" in err and "Traceback" not in err
