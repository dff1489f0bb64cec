import json

import pytest
from conftest import toy_rows, write_csv

from slingshot.data import load_data, load_file
from slingshot.errors import DataError
from slingshot.recipe import recipe_from_dict


def recipe(tmp_path, **data):
    return recipe_from_dict({"data": data}, base_dir=tmp_path)


def test_csv_train_and_eval_with_string_labels(tmp_path):
    write_csv(tmp_path / "train.csv", [("good film", "pos"), ("bad film", "neg"), ("fine", "pos")])
    write_csv(tmp_path / "dev.csv", [("great", "pos"), ("awful", "neg")])
    loaded = load_data(recipe(tmp_path, train="train.csv", eval="dev.csv"))
    assert loaded.label_names == ["neg", "pos"]
    assert loaded.splits["train"]["label"] == [1, 0, 1]
    assert loaded.splits["eval"]["text"] == ["great", "awful"]
    assert loaded.splits["train"]["row"] == [2, 3, 4]  # line numbers in the file


def test_tsv_jsonl_json_and_parquet_load_the_same_rows(tmp_path):
    rows = [("a b", "x"), ("c d", "y"), ("e", "x")]
    write_csv(tmp_path / "d.tsv", rows, delimiter="\t")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in rows))
    (tmp_path / "d.json").write_text(json.dumps({"data": [{"text": t, "label": l} for t, l in rows]}))
    from datasets import Dataset

    Dataset.from_dict({"text": [t for t, _ in rows], "label": [l for _, l in rows]}).to_parquet(str(tmp_path / "d.parquet"))
    for suffix in ("tsv", "jsonl", "json", "parquet"):
        loaded = load_data(recipe(tmp_path, train=f"d.{suffix}", eval=f"d.{suffix}"))
        assert loaded.splits["train"]["text"] == ["a b", "c d", "e"], suffix
        assert loaded.splits["train"]["label"] == [0, 1, 0], suffix


def test_integer_labels_map_to_given_label_names(tmp_path):
    write_csv(tmp_path / "t.tsv", [("x", 0), ("y", 1)], header=("sentence", "label"), delimiter="\t")
    loaded = load_data(recipe(tmp_path, train="t.tsv", eval="t.tsv", text_column="sentence",
                              label_names=["negative", "positive"]))
    assert loaded.label_names == ["negative", "positive"]
    assert loaded.splits["eval"]["label"] == [0, 1]


def test_text_pairs_and_custom_columns(tmp_path):
    write_csv(tmp_path / "p.csv", [("a", "b", "yes"), ("c", "d", "no")], header=("q", "p", "y"))
    loaded = load_data(recipe(tmp_path, train="p.csv", eval="p.csv", text_column="q", text_pair_column="p",
                              label_column="y"))
    assert loaded.splits["train"]["text_pair"] == ["b", "d"]


def test_folder_with_train_and_dev_files(tmp_path):
    write_csv(tmp_path / "train.csv", toy_rows(20))
    write_csv(tmp_path / "dev.csv", toy_rows(6, seed=3))
    loaded = load_data(recipe(tmp_path, train="."))
    assert len(loaded.splits["train"]) == 20 and len(loaded.splits["eval"]) == 6


def test_seeded_stratified_split_when_no_eval_file(tmp_path):
    write_csv(tmp_path / "t.csv", toy_rows(100))
    r = recipe(tmp_path, train="t.csv", eval_fraction=0.2, seed=7)
    first, second = load_data(r), load_data(r)
    assert len(first.splits["eval"]) == 20
    assert sorted(first.splits["eval"]["label"]) == [0] * 10 + [1] * 10  # both classes, equal shares
    assert first.splits["eval"]["row"] == second.splits["eval"]["row"]
    assert not set(first.splits["eval"]["row"]) & set(first.splits["train"]["row"])


def test_limit_takes_a_seeded_sample_per_split(tmp_path):
    write_csv(tmp_path / "t.csv", toy_rows(100))
    r = recipe(tmp_path, train="t.csv", eval="t.csv", limit={"train": 30, "eval": 10})
    loaded = load_data(r)
    assert len(loaded.splits["train"]) == 30 and len(loaded.splits["eval"]) == 10
    assert load_data(r).splits["train"]["row"] == loaded.splits["train"]["row"]


def test_empty_and_whitespace_texts_are_skipped_and_counted(tmp_path):
    write_csv(tmp_path / "t.csv", [("good", "pos"), ("   ", "neg"), ("", "pos"), ("bad", "neg")])
    loaded = load_data(recipe(tmp_path, train="t.csv", eval="t.csv"))
    assert len(loaded.splits["train"]) == 2
    assert loaded.skipped["train"].count == 2
    assert loaded.skipped["train"].examples[0].endswith("t.csv:3")


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match="not found.*nope.csv"):
        load_data(recipe(tmp_path, train="nope.csv"))


def test_missing_column_lists_the_columns_found(tmp_path):
    write_csv(tmp_path / "t.csv", [("a", "x")], header=("sentence", "label"))
    with pytest.raises(DataError) as error:
        load_data(recipe(tmp_path, train="t.csv"))
    assert "'text' not found" in error.value.message
    assert "columns found: sentence, label" in error.value.message
    assert "data.text_column" in error.value.hint


def test_malformed_csv_row_names_file_and_line(tmp_path):
    (tmp_path / "t.csv").write_text('text,label\ngood,pos\n"bad, worse",neg,extra\nok,pos\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"t\.csv:3: malformed row: 3 fields where the header has 2"):
        load_data(recipe(tmp_path, train="t.csv"))


def test_unclosed_quote_is_a_malformed_row(tmp_path):
    (tmp_path / "t.csv").write_text('text,label\ngood,pos\n"bad,neg\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"t\.csv:\d+: malformed row"):
        load_data(recipe(tmp_path, train="t.csv"))


def test_non_utf8_bytes_name_the_line(tmp_path):
    (tmp_path / "t.csv").write_bytes("text,label\ngood,pos\ncaf\xe9,neg\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"t\.csv:3: bytes that are not UTF-8") as error:
        load_data(recipe(tmp_path, train="t.csv"))
    assert "UTF-8" in error.value.hint


def test_single_class_training_set_is_refused(tmp_path):
    write_csv(tmp_path / "t.csv", [("good", "pos"), ("great", "pos")])
    with pytest.raises(DataError, match="single class"):
        load_data(recipe(tmp_path, train="t.csv", eval="t.csv"))


def test_eval_label_unseen_in_training_is_refused(tmp_path):
    write_csv(tmp_path / "train.csv", [("good", "pos"), ("bad", "neg")])
    write_csv(tmp_path / "dev.csv", [("meh", "neutral"), ("good", "pos")])
    with pytest.raises(DataError, match="label 'neutral' \\(1 rows\\) never occurs in training"):
        load_data(recipe(tmp_path, train="train.csv", eval="dev.csv"))
    # inspect loads it anyway and reports it
    assert load_data(recipe(tmp_path, train="train.csv", eval="dev.csv"), strict=False).unseen_eval_labels == {
        "eval": {"neutral": 1}}


def test_regression_labels_must_be_numbers(tmp_path):
    write_csv(tmp_path / "t.csv", [("a", "0.5"), ("b", "high")])
    r = recipe_from_dict({"task": "regression", "data": {"train": "t.csv", "eval": "t.csv"}}, base_dir=tmp_path)
    with pytest.raises(DataError, match=r"t\.csv:3: label 'high' is not a number"):
        load_data(r)


def test_load_file_reads_labels_only_when_present(tmp_path):
    write_csv(tmp_path / "t.csv", [("good", "pos"), ("bad", "neg")])
    (tmp_path / "u.csv").write_text("text\nnice\n", encoding="utf-8")
    r = recipe(tmp_path, train="t.csv")
    labelled, _ = load_file(str(tmp_path / "t.csv"), r, ["neg", "pos"], need_label=None)
    unlabelled, _ = load_file(str(tmp_path / "u.csv"), r, ["neg", "pos"], need_label=None)
    assert labelled["label"] == [1, 0] and "label" not in unlabelled.column_names
    with pytest.raises(DataError, match="'label' not found"):
        load_file(str(tmp_path / "u.csv"), r, ["neg", "pos"], need_label=True)


def test_unreachable_hub_dataset_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError) as error:
        load_data(recipe(tmp_path, train="nobody/no-such-dataset"))
    assert "cannot load Hugging Face dataset 'nobody/no-such-dataset'" in error.value.message
    assert "local file" in error.value.hint
