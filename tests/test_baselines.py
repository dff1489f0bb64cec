"""Prompts, answer parsing and k-shot selection of the baselines."""

import pytest

from slingshot.baselines import (
    build_prompt,
    majority,
    parse_label,
    pick_shots,
    response_format,
)

LABELS = ["positive", "negative", "very positive"]


@pytest.mark.parametrize(("answer", "expected"), [
    ("positive", "positive"),
    ("  Negative. ", "negative"),
    ('"POSITIVE"', "positive"),
    ("Label: negative", "negative"),
    ("**very positive**", "very positive"),
    ('{"label": "negative"}', "negative"),
    ('```json\n{"label": "Very Positive"}\n```', "very positive"),
    ("I think this review is negative overall.", "negative"),
    ("very positive, not negative", "very positive"),  # first mentioned; the longer label wins a tie
    ("positively charming", None),  # whole words only
    ("neutral", None),
    ("", None),
    ('{"label": "neutral"}', None),
    ("{not json", None),
])
def test_parse_label(answer, expected):
    assert parse_label(answer, LABELS) == expected


def test_shots_take_labels_in_turn_reproducibly():
    texts = [f"t{i}" for i in range(30)]
    labels = ["a"] * 20 + ["b"] * 8 + ["c"] * 2
    shots = pick_shots(texts, labels, ["a", "b", "c"], 7, seed=3)
    assert [label for _, label in shots] == ["a", "b", "c", "a", "b", "c", "a"]
    assert shots == pick_shots(texts, labels, ["a", "b", "c"], 7, seed=3)
    assert shots != pick_shots(texts, labels, ["a", "b", "c"], 7, seed=4)
    assert len(pick_shots(texts, labels, ["a", "b", "c"], 100, seed=0)) == 30
    assert pick_shots(texts, labels, ["a", "b", "c"], 0, seed=0) == []


def test_prompt_lists_labels_descriptions_shots_then_the_text():
    system, user = build_prompt("great film", None, ["pos", "neg"], {"pos": "the reviewer liked it"},
                                [("awful", "neg")], "text")
    assert "exactly one of the labels" in system
    assert "- pos: the reviewer liked it\n- neg" in user
    assert user.index("Text: awful\nLabel: neg") < user.index("Text: great film")
    assert user.endswith("Text: great film\nLabel:")
    _, pair_prompt = build_prompt("a", "b", ["yes", "no"], {}, [], "json_object")
    assert "Second text: b" in pair_prompt


def test_structured_output_formats():
    schema = response_format("json_schema", ["pos", "neg"])
    assert schema["json_schema"]["schema"]["properties"]["label"]["enum"] == ["pos", "neg"]
    assert response_format("json_object", ["pos"]) == {"type": "json_object"}
    assert response_format("text", ["pos"]) is None


def test_majority_and_mean():
    assert majority(["a", "b", "b"], 4).predictions == ["b"] * 4
    assert majority([1.0, 2.0, 6.0], 2, regression=True).predictions == [3.0, 3.0]
