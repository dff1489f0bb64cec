import math

import numpy as np
import pytest

from slingshot.metrics import (
    classification_metrics,
    exact_match,
    generation_metrics,
    longest_common_subsequence,
    normalize_answer,
    qa_metrics,
    regression_metrics,
    rouge_l,
    token_f1,
)


def test_classification_metrics_match_hand_computed_values():
    gold = [0, 0, 0, 1, 1, 2]
    predicted = [0, 0, 1, 1, 0, 2]
    m = classification_metrics(predicted, gold, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    # a: P 2/3 R 2/3; b: P 1/2 R 1/2; c: P 1 R 1
    assert m["per_class"]["a"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert m["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert m["per_class"]["a"]["support"] == 3


def test_classification_metrics_agree_with_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(0)
    gold, predicted = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    m = classification_metrics(predicted, gold, list("abcd"))
    assert m["accuracy"] == pytest.approx(accuracy_score(gold, predicted))
    assert m["macro_f1"] == pytest.approx(f1_score(gold, predicted, average="macro"))


def test_class_never_predicted_has_zero_precision_not_nan():
    m = classification_metrics([0, 0], [0, 1], ["a", "b"])
    assert m["per_class"]["b"]["precision"] == 0.0
    assert not math.isnan(m["macro_f1"])


def test_regression_metrics_match_hand_computed_values():
    m = regression_metrics([1.0, 2.0, 4.0], [1.0, 3.0, 3.0])
    assert m["mae"] == pytest.approx(2 / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(2 / 3))
    assert m["spearman"] == pytest.approx(0.8660254, abs=1e-6)


def test_regression_metrics_with_constant_predictions_are_finite():
    m = regression_metrics([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    assert m["pearson"] == 0.0 and m["spearman"] == 0.0


# ---------------------------------------------------------------------------------------------------- extractive QA


def test_squad_normalisation_drops_case_punctuation_articles_and_extra_spaces():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("Theater") == "theater"  # an article only as a whole word


def test_token_f1_matches_hand_computed_values():
    # prediction: "cat sat on mat" (4 tokens), gold: "the cat sat" -> "cat sat" (2): 2 common tokens
    # precision 2/4, recall 2/2, F1 = 2 * 0.5 * 1 / 1.5 = 2/3
    assert token_f1("cat sat on mat", "the cat sat") == pytest.approx(2 / 3)
    assert token_f1("a b", "c d") == 0.0
    assert token_f1("", "cat") == 0.0
    # repeated tokens count with multiplicity: "x x y" vs "x y y": common {x:1, y:1} = 2, P = R = 2/3
    assert token_f1("x x y", "x y y") == pytest.approx(2 / 3)


def test_exact_match_ignores_what_normalisation_removes():
    assert exact_match("The Cat.", "cat") == 1.0
    assert exact_match("cats", "cat") == 0.0


def test_qa_metrics_take_the_best_gold_answer_and_report_percent():
    predictions = ["cat sat on mat", "blue", ""]
    golds = [["the dog", "the cat sat"], ["Blue.", "navy blue"], ["anything"]]
    m = qa_metrics(predictions, golds)
    # EM: 0, 1, 0 -> 33.3; F1: max(0, 2/3) = 2/3, 1, 0 -> (2/3 + 1) / 3 * 100
    assert m["exact_match"] == pytest.approx(100 / 3)
    assert m["f1"] == pytest.approx((2 / 3 + 1) / 3 * 100)
    assert m["examples"] == 3


def test_longest_common_subsequence_by_hand():
    assert longest_common_subsequence("a b c d e".split(), "a c e".split()) == 3
    assert longest_common_subsequence("x y".split(), "a b".split()) == 0
    assert longest_common_subsequence("a b a b".split(), "b a b a".split()) == 3


def test_rouge_l_matches_hand_computed_values():
    # LCS "the cat on the mat" = 5 of 6 predicted and 5 of 6 reference tokens: P = R = F = 5/6
    assert rouge_l("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(5 / 6)
    # LCS "police the gunman" = 3 of 4 tokens each way: P = R = F = 3/4 (after Lin, 2004, section 3)
    assert rouge_l("police killed the gunman", "police kill the gunman") == pytest.approx(3 / 4)
    # prediction 2 tokens, reference 4, LCS 2: P = 1, R = 1/2, F = 2/3
    assert rouge_l("red falcon", "a red small falcon") == pytest.approx(2 / 3)
    assert rouge_l("Red, Falcon!", "red falcon") == 1.0  # case and punctuation do not count
    assert rouge_l("", "red falcon") == 0.0 and rouge_l("blue", "red") == 0.0


def test_generation_metrics_take_the_best_reference_in_percent():
    metrics = generation_metrics(["red falcon", "blue"], [["red falcon"], ["a blue otter", "blue"]])
    assert metrics["exact_match"] == 100.0 and metrics["rouge_l"] == 100.0
    metrics = generation_metrics(["red falcon"], [["a red small falcon"]])
    assert metrics["rouge_l"] == pytest.approx(200 / 3) and metrics["exact_match"] == 0.0
