"""`serve` on 127.0.0.1: answers, micro-batching under a burst, JSON errors, the OpenAI route, auth; ONNX export.
Classification runs first, then extractive-QA and generation runs."""

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
from slingshot.predictor import Predictor, load_predictor
from slingshot.serve import ServeLimits, build_app


class Server:
    def __init__(self, run_path, limits: ServeLimits, backend: str = "torch"):
        import uvicorn

        self.loaded = load_run(str(run_path))
        self.app = build_app(load_predictor(self.loaded, backend=backend), self.loaded, limits)
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


# ------------------------------------------------------------------------------------------------ extractive QA


def qa_questions(count: int, seed: int) -> list[tuple[str, str]]:
    from test_qa import toy_qa

    return [(row["question"], row["context"]) for row in toy_qa(count, seed)]


@pytest.fixture(scope="module")
def qa_server(qa_trained_run):
    running = Server(qa_trained_run, ServeLimits(max_texts_per_request=20, max_text_chars=400, max_wait_ms=20))
    yield running
    running.stop()


def cli_json(monkeypatch, capsys, *argv) -> list[dict]:
    from slingshot.cli import main

    monkeypatch.setattr(sys, "argv", ["slingshot", *map(str, argv), "--json"])
    main()
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_qa_requests_get_the_answers_of_slingshot_predict(qa_server, qa_trained_run, monkeypatch, capsys):
    pairs = qa_questions(4, seed=7)
    expected = [cli_json(monkeypatch, capsys, "predict", qa_trained_run, "--question", question, "--context",
                         context)[0] for question, context in pairs]
    assert any(len(context.split()) > 30 for _, context in pairs)  # some contexts take several 32-token windows

    single = httpx.post(f"{qa_server.url}/v1/predict", json={"question": pairs[0][0], "context": pairs[0][1]}).json()
    batched = httpx.post(f"{qa_server.url}/v1/predict",
                         json={"inputs": [{"question": q, "context": c} for q, c in pairs]}).json()
    assert single["model"] == batched["model"] == f"slingshot/{qa_trained_run.name}"
    assert single["predictions"] == batched["predictions"][:1]
    for (_, context), answer, record in zip(pairs, batched["predictions"], expected):
        assert (answer["answer"], answer["start"]) == (record["predicted"], record["start"])
        assert answer["score"] == pytest.approx(record["score"], abs=1e-3)
        assert context[answer["start"]:answer["end"]] == answer["answer"] != ""


def test_concurrent_qa_requests_are_answered_correctly_and_batched(qa_server):
    pairs = qa_questions(24, seed=11)
    expected = load_predictor(qa_server.loaded).predict(pairs)
    before = httpx.get(f"{qa_server.url}/v1/model").json()["batching"]

    def ask(pair):
        return httpx.post(f"{qa_server.url}/v1/predict", json={"question": pair[0], "context": pair[1]}, timeout=30)

    with ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(pool.map(ask, pairs))
    assert all(response.status_code == 200 for response in responses)
    assert [r.json()["predictions"][0]["answer"] for r in responses] == [e["answer"] for e in expected]
    after = httpx.get(f"{qa_server.url}/v1/model").json()["batching"]
    assert after["items"] - before["items"] == 24
    assert after["batches"] - before["batches"] < 24 and after["max_batch_items"] > 1


@pytest.mark.parametrize(("body", "status", "fragment", "field"), [
    ({"texts": ["a film"]}, 422, "this run is extractive_qa: send question and context", "texts"),
    ({"question": "it was"}, 422, "missing field 'context'", "context"),
    ({"inputs": [{"question": "it was"}]}, 422, "'inputs[0].context' must be a string", "inputs[0].context"),
    ({"question": "it was", "context": "  "}, 422, "'context' is empty", "context"),
    ({"question": "it was", "context": "fun " * 101}, 413, "context has 404 characters", None),
    ({"inputs": [{"question": "it was", "context": "a fun plot"}] * 21}, 413, "limit is 20", "inputs"),
])
def test_wrong_qa_fields_get_errors_naming_them_and_the_server_keeps_answering(qa_server, body, status, fragment,
                                                                               field):
    response = httpx.post(f"{qa_server.url}/v1/predict", json=body)
    assert response.status_code == status
    assert fragment in response.json()["error"]["message"]
    assert response.json()["error"].get("field") == field
    again = httpx.post(f"{qa_server.url}/v1/predict", json={"question": "it was", "context": "the plot was fun"})
    assert again.status_code == 200 and again.json()["predictions"][0]["answer"] == "fun"


def test_openai_client_gets_the_answer_span_of_a_qa_run(qa_server):
    import openai

    client = openai.OpenAI(base_url=f"{qa_server.url}/v1", api_key="unused", max_retries=0)
    question, context = "it was", "the story was quite dull and the actors lovely"
    expected = load_predictor(qa_server.loaded).predict([(question, context)])[0]["answer"]
    in_system = client.chat.completions.create(model="anything", messages=[
        {"role": "system", "content": context}, {"role": "user", "content": question}])
    assert in_system.choices[0].message.content == expected == "lovely"
    assert in_system.usage.prompt_tokens > 0 and in_system.usage.completion_tokens == 1
    inline = client.chat.completions.create(model="anything", messages=[
        {"role": "user", "content": f"{context}\n\nQuestion: {question}"}])  # docs2qa's chat format
    assert inline.choices[0].message.content == expected
    bad = httpx.post(f"{qa_server.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "it was"}]})
    assert bad.status_code == 422 and "system message" in bad.json()["error"]["message"]


def test_model_info_reports_each_tasks_own_fields(server, qa_server):
    qa = httpx.get(f"{qa_server.url}/v1/model").json()
    assert qa["task"] == "extractive_qa" and qa["inputs"] == ["question", "context"] and "labels" not in qa
    assert qa["window_tokens"] == 32 and qa["stride"] == 8 and qa["metrics"]["f1"] > 50
    assert "send question and context" in qa["expects"]
    assert httpx.get(f"{server.url}/v1/model").json()["expects"].startswith("send texts")


def test_qa_batch_cost_counts_every_window():
    from slingshot.serve import qa_tokens

    short = qa_tokens("who?", "a" * 40, window_tokens=32, stride=8)  # 4 question + 11 context tokens: one window
    assert short == 4 + 11
    long = qa_tokens("who?", "a" * 400, window_tokens=32, stride=8)  # 101 context tokens, 28 a window, 8 shared
    assert long == 5 * 4 + 101 + 4 * 8


# ------------------------------------------------------------------------------------------------ generation


@pytest.fixture(scope="module")
def generation_server(generation_trained_run):
    running = Server(generation_trained_run, ServeLimits(max_text_chars=300, max_new_tokens=32))
    yield running
    running.stop()


def test_a_prompt_gets_the_answer_of_slingshot_predict(generation_server):
    from conftest import qa_pairs

    from slingshot.evaluate import predict_prompts

    pairs = qa_pairs()[:3]
    prompts = [pair["prompt"] for pair in pairs]
    expected = [record["predicted"] for record in predict_prompts(generation_server.loaded, prompts)]
    assert expected == [pair["completion"] for pair in pairs]  # the run memorised them
    single = httpx.post(f"{generation_server.url}/v1/predict", json={"prompt": prompts[0]}).json()
    assert single["predictions"][0]["text"] == expected[0] and single["predictions"][0]["stopped_at_eos"]
    batched = httpx.post(f"{generation_server.url}/v1/predict", json={"prompts": prompts}).json()
    assert [p["text"] for p in batched["predictions"]] == expected
    cut = httpx.post(f"{generation_server.url}/v1/predict",
                     json={"prompt": prompts[0], "max_new_tokens": 1, "temperature": 0.7, "top_p": 0.9, "seed": 3})
    assert cut.json()["predictions"][0]["completion_tokens"] == 1
    info = httpx.get(f"{generation_server.url}/v1/model").json()
    assert info["task"] == "generation" and info["generation"]["max_new_tokens"] == 12
    assert info["max_new_tokens_limit"] == 32 and info["batching"]["requests"] >= 3


def test_openai_client_chats_with_a_generation_run(generation_server):
    import openai
    from conftest import qa_pairs

    from slingshot.chat_template import encode_prompt

    client = openai.OpenAI(base_url=f"{generation_server.url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": qa_pairs()[1]["prompt"]}]
    answer = client.chat.completions.create(model="anything", messages=messages)
    assert answer.choices[0].message.content == qa_pairs()[1]["completion"]
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens == len(encode_prompt(generation_server.loaded.tokenizer, messages))
    assert answer.usage.completion_tokens > 0
    short = client.chat.completions.create(model="anything", messages=messages, max_tokens=1)
    assert short.usage.completion_tokens == 1 and short.choices[0].finish_reason == "length"
    bad = httpx.post(f"{generation_server.url}/v1/chat/completions", json={"messages": [{"role": "tool",
                                                                                         "content": "x"}]})
    assert bad.status_code == 422 and "message 0" in bad.json()["error"]["message"]


@pytest.mark.parametrize(("body", "status", "fragment"), [
    ({"text": "hello"}, 422, "this run is generation: send prompt"),
    ({"prompt": "hello", "max_new_tokens": 33}, 422, "'max_new_tokens' must be an integer from 1 to 32"),
    ({"prompt": "hello", "temperature": 2.5}, 422, "'temperature' must be a number from 0 to 2"),
    ({"prompts": []}, 422, "'prompts' is empty"),
    ({"prompt": "x" * 301}, 413, "301 characters"),
    ({"prompt": "q " * 140}, 413, "tokens with the chat template; this run's limit is 64"),
])
def test_wrong_generation_requests_get_errors_and_the_server_keeps_answering(generation_server, body, status,
                                                                              fragment):
    from conftest import qa_pairs

    response = httpx.post(f"{generation_server.url}/v1/predict", json=body)
    assert response.status_code == status
    assert fragment in response.json()["error"]["message"]
    again = httpx.post(f"{generation_server.url}/v1/predict", json={"prompt": qa_pairs()[0]["prompt"]})
    assert again.status_code == 200 and again.json()["predictions"][0]["text"] == qa_pairs()[0]["completion"]


def test_a_taken_port_is_one_clear_error_before_the_model_loads(tmp_path):
    import socket

    from slingshot.errors import SlingshotError
    from slingshot.serve import bind_socket, serve

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        with pytest.raises(SlingshotError, match=f"cannot listen on 127.0.0.1:{port}: the port is in use"):
            serve(str(tmp_path / "no-run"), "127.0.0.1", port, ServeLimits())  # the port is checked first
    finally:
        holder.close()
    free = bind_socket("127.0.0.1", 0)
    assert free.getsockname()[1] > 0
    free.close()
