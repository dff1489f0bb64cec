"""`serve` on 127.0.0.1: answers, micro-batching under a burst, JSON errors, the OpenAI route, auth; ONNX export."""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import toy_rows

from slingshot.evaluate import load_run
from slingshot.predictor import Predictor
from slingshot.serve import ServeLimits, build_app


class Server:
    def __init__(self, run_path, limits: ServeLimits, backend: str = "torch"):
        import uvicorn

        self.loaded = load_run(str(run_path))
        self.app = build_app(Predictor(self.loaded, backend=backend), self.loaded, limits)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def server(toy_trained_run):
    running = Server(toy_trained_run, ServeLimits(max_texts_per_request=50, max_text_chars=500, max_wait_ms=20))
    yield running
    running.stop()


def test_health_and_model_info(server):
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    info = httpx.get(f"{server.url}/v1/model").json()
    assert info["task"] == "classification" and info["labels"] == ["neg", "pos"]
    assert info["metrics"]["accuracy"] == 1.0


def test_single_and_batched_predictions_match_the_model(server):
    texts = [text for text, _ in toy_rows(10, seed=5)]
    expected = Predictor(server.loaded).predict(texts)
    single = httpx.post(f"{server.url}/v1/predict", json={"text": texts[0]}).json()
    assert single["predictions"] == expected[:1]
    batched = httpx.post(f"{server.url}/v1/predict", json={"texts": texts}).json()
    assert [p["label"] for p in batched["predictions"]] == [p["label"] for p in expected]
    assert batched["predictions"][0]["probabilities"].keys() == {"neg", "pos"}


def test_a_burst_of_concurrent_requests_is_answered_correctly_and_batched(server):
    rows = toy_rows(64, seed=9)
    expected = [p["label"] for p in Predictor(server.loaded).predict([text for text, _ in rows])]
    before = httpx.get(f"{server.url}/v1/model").json()["batching"]

    def ask(text):
        return httpx.post(f"{server.url}/v1/predict", json={"text": text}, timeout=30)

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(ask, [text for text, _ in rows]))
    assert all(response.status_code == 200 for response in responses)
    assert [response.json()["predictions"][0]["label"] for response in responses] == expected
    after = httpx.get(f"{server.url}/v1/model").json()["batching"]
    assert after["items"] - before["items"] == 64
    assert after["batches"] - before["batches"] < 64 and after["max_batch_items"] > 1  # requests shared batches


@pytest.mark.parametrize(("body", "status", "fragment"), [
    (b"{not json", 400, "malformed JSON"),
    (json.dumps({"txts": ["a"]}).encode(), 422, "unknown field 'txts'"),
    (json.dumps({"texts": "a single string"}).encode(), 422, "'texts' must be a list of strings"),
    (json.dumps({"texts": [1, 2]}).encode(), 422, "'texts' must be a list of strings"),
    (json.dumps({}).encode(), 422, "missing field"),
    (json.dumps([1, 2]).encode(), 422, "JSON object"),
    (json.dumps({"texts": ["a"] * 51}).encode(), 413, "limit is 50"),
    (json.dumps({"text": "x" * 501}).encode(), 413, "501 characters"),
])
def test_bad_requests_get_json_errors_and_the_server_keeps_answering(server, body, status, fragment):
    response = httpx.post(f"{server.url}/v1/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert fragment in response.json()["error"]["message"]
    assert httpx.post(f"{server.url}/v1/predict", json={"text": "good film"}).status_code == 200


def test_openai_client_gets_the_label_as_the_answer(server):
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    text = "the film was great"
    answer = client.chat.completions.create(model="anything", messages=[{"role": "user", "content": text}])
    assert answer.choices[0].message.content == Predictor(server.loaded).labels([text])[0]
    assert answer.usage.prompt_tokens > 0
    bad = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": []})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "messages"


def test_compare_can_use_a_served_model_as_its_llm(server, toy_trained_run, tmp_path):
    import shutil

    from slingshot.compare import compare_run
    from slingshot.recipe import CompareSection

    run = shutil.copytree(toy_trained_run, tmp_path / "run")
    options = CompareSection(baselines=["llm"], latency_examples=3, bootstrap_samples=200,
                             llm={"base_url": f"{server.url}/v1", "model": "slingshot", "max_retries": 0,
                                  "price_input_per_1m_usd": 0, "price_output_per_1m_usd": 0})
    report = compare_run(str(run), options).report
    ours, served = report["systems"][0], report["systems"][1]
    assert served["invalid_answers"] == 0
    assert served["metrics"]["accuracy"]["value"] == ours["metrics"]["accuracy"]["value"]


def test_bearer_token_is_required_when_configured(toy_trained_run):
    running = Server(toy_trained_run, ServeLimits(auth_token="s3cret"))
    try:
        assert httpx.post(f"{running.url}/v1/predict", json={"text": "good"}).status_code == 401
        ok = httpx.post(f"{running.url}/v1/predict", json={"text": "good"},
                        headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert httpx.get(f"{running.url}/health").status_code == 200  # health stays open for probes
    finally:
        running.stop()


def test_onnx_export_agrees_with_pytorch_and_predicts_through_the_cli(toy_trained_run, tmp_path, capsys,
                                                                      monkeypatch):
    import shutil

    from slingshot.cli import main
    from slingshot.onnx_export import export_onnx

    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    run = shutil.copytree(toy_trained_run, tmp_path / "run")
    check = export_onnx(str(run))
    assert check["label_agreement"] == 1.0 and check["max_probability_difference"] < 1e-3
    assert (run / "onnx" / "model.onnx").is_file() and (run / "onnx" / "check.json").is_file()
    check8 = export_onnx(str(run), int8=True)
    assert check8["label_agreement"] >= 0.9 and (run / "onnx" / "model-int8.onnx").is_file()

    monkeypatch.setattr(sys, "argv", ["slingshot", "predict", str(run), "a great film", "--backend", "onnx",
                                      "--json"])
    main()
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]  # JSON lines
    assert printed[0]["predicted"] == Predictor(load_run(str(run))).labels(["a great film"])[0]

    monkeypatch.setattr(sys, "argv", ["slingshot", "export", str(run), "--onnx"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2 and "already exists" in capsys.readouterr().err


def test_shutdown_lets_requests_in_flight_finish(toy_trained_run):
    running = Server(toy_trained_run, ServeLimits(max_wait_ms=600))  # the request waits in the batcher
    results = {}

    def ask():
        results["response"] = httpx.post(f"{running.url}/v1/predict", json={"text": "a great film"}, timeout=30)

    client = threading.Thread(target=ask)
    client.start()
    time.sleep(0.2)
    running.server.should_exit = True  # what SIGINT/SIGTERM does
    client.join(30)
    running.thread.join(30)
    assert results["response"].status_code == 200
    assert results["response"].json()["predictions"][0]["label"] in {"neg", "pos"}
