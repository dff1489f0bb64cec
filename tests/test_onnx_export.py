"""`export --onnx` beyond classification: an extractive-QA run's start/end-logits graph, checked against PyTorch,
answering through `predict` and `serve`; a generation run refused in one line."""

from __future__ import annotations

import json
import shutil
import sys

import httpx
import pytest
from test_serve import Server, qa_questions

from slingshot.evaluate import load_run
from slingshot.predictor import QAPredictor
from slingshot.serve import ServeLimits


@pytest.fixture(scope="module")
def exported_qa_run(qa_trained_run, tmp_path_factory):
    """A copy of the QA run with its fp32 ONNX export (and the check it wrote)."""
    from slingshot.onnx_export import export_onnx

    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    run = shutil.copytree(qa_trained_run, tmp_path_factory.mktemp("qa-onnx") / "run")
    return run, export_onnx(str(run))


def test_qa_onnx_export_gives_the_spans_and_logits_of_pytorch(exported_qa_run):
    run, check = exported_qa_run
    assert check["examples"] == 40 and check["windows"] > 40  # long contexts take several windows
    assert check["span_agreement"] == 1.0 and check["disagreements"] == 0
    assert check["max_start_logit_difference"] < 1e-3 and check["max_end_logit_difference"] < 1e-3
    assert json.loads((run / "onnx" / "check.json").read_text())["span_agreement"] == 1.0


def test_qa_int8_export_mostly_agrees_and_writes_its_own_check(exported_qa_run):
    from slingshot.onnx_export import export_onnx

    run, _ = exported_qa_run
    check = export_onnx(str(run), int8=True)
    assert check["span_agreement"] >= 0.8 and (run / "onnx" / "model-int8.onnx").is_file()
    assert (run / "onnx" / "check-int8.json").is_file()
    assert 0 < check["max_start_logit_difference"] < 5  # quantised: close, not equal


def test_predict_with_the_onnx_backend_answers_as_pytorch(exported_qa_run, capsys, monkeypatch):
    from slingshot.cli import main

    run, _ = exported_qa_run
    question, context = qa_questions(1, seed=5)[0]
    monkeypatch.setattr(sys, "argv", ["slingshot", "predict", str(run), "--question", question, "--context", context,
                                      "--backend", "onnx", "--json"])
    main()
    record = json.loads(capsys.readouterr().out)
    expected = QAPredictor(load_run(str(run))).predict([(question, context)])[0]
    assert (record["predicted"], record["start"]) == (expected["answer"], expected["start"])


def test_serve_with_the_onnx_backend_answers_qa_requests(exported_qa_run):
    run, _ = exported_qa_run
    pairs = qa_questions(6, seed=13)
    running = Server(run, ServeLimits(), backend="onnx")
    try:
        response = httpx.post(f"{running.url}/v1/predict", json={"inputs": [{"question": q, "context": c}
                                                                            for q, c in pairs]})
        assert httpx.get(f"{running.url}/v1/model").json()["backend"] == "onnx"
    finally:
        running.stop()
    expected = QAPredictor(running.loaded).predict(pairs)
    assert [p["answer"] for p in response.json()["predictions"]] == [e["answer"] for e in expected]


def test_onnx_export_of_a_generation_run_is_one_clear_error(generation_trained_run, capsys, monkeypatch):
    from slingshot.cli import main

    monkeypatch.setattr(sys, "argv", ["slingshot", "export", str(generation_trained_run), "--onnx"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert "is a generation run" in err and "export" in err and "--merge" in err
    assert not (generation_trained_run / "onnx").exists()
