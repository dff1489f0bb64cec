"""The OpenAI-compatible client against a real scripted HTTP server on 127.0.0.1."""

from __future__ import annotations

import socket

import pytest
from llm_server import Hang, Raw, Status, completion

from slingshot.llm import (
    ChatRequest,
    LLMClient,
    LLMError,
    prices_per_1m_usd,
    slingshot_home,
    token_cost_usd,
)
from slingshot.recipe import LLMSection


def endpoint(url: str, **options) -> LLMSection:
    settings = {"base_url": url, "model": "scripted", "timeout_s": 5, "max_retries": 2, "concurrency": 4}
    settings.update(options)
    return LLMSection(**settings)


def echo(request: dict, number: int) -> str:
    return "answer to " + request["messages"][-1]["content"]


def requests_for(count: int) -> list[ChatRequest]:
    return [ChatRequest.of("You label texts.", f"text {i}") for i in range(count)]


def test_answers_come_back_in_request_order_with_usage(fake_llm):
    server = fake_llm(echo)
    results, usage = LLMClient(endpoint(server.url)).complete(requests_for(12))
    assert [result.text for result in results] == [f"answer to text {i}" for i in range(12)]
    assert usage.requests == 12 and usage.cached == 0
    assert usage.prompt_tokens == 12 * 20 and usage.completion_tokens == 12 * 3
    assert server.requests[0]["messages"][0] == {"role": "system", "content": "You label texts."}
    assert server.requests[0]["temperature"] == 0 and server.requests[0]["model"] == "scripted"


def test_rerun_is_served_from_the_cache_with_the_same_numbers(fake_llm):
    server = fake_llm(echo)
    first, _ = LLMClient(endpoint(server.url)).complete(requests_for(5))
    sent = len(server.requests)
    second, usage = LLMClient(endpoint(server.url)).complete(requests_for(5))
    assert len(server.requests) == sent
    assert usage.cached == 5 and all(result.cached for result in second)
    assert [r.text for r in second] == [r.text for r in first]
    assert [r.latency_s for r in second] == [r.latency_s for r in first]
    assert usage.prompt_tokens == 5 * 20  # the cost of obtaining the answers, not of reading the cache
    assert (slingshot_home() / "llm-cache.sqlite").exists()


def test_cache_key_depends_on_model_prompt_and_parameters(fake_llm):
    server = fake_llm(echo)
    client = LLMClient(endpoint(server.url))
    base = ChatRequest.of(None, "hello")
    keys = {client.cache_key(base), client.cache_key(ChatRequest.of(None, "hello!")),
            client.cache_key(ChatRequest.of(None, "hello", temperature=0.7)),
            client.cache_key(ChatRequest.of(None, "hello", sample=1)),
            LLMClient(endpoint(server.url, model="other")).cache_key(base)}
    assert len(keys) == 5
    assert client.cache_key(base) == LLMClient(endpoint(server.url, concurrency=1)).cache_key(base)


def test_rate_limit_then_success_is_retried(fake_llm):
    server = fake_llm(lambda request, number: Status(429, "slow down") if number <= 2 else "ok")
    results, usage = LLMClient(endpoint(server.url, concurrency=1)).complete(requests_for(1))
    assert results[0].text == "ok" and usage.failed == 0
    assert len(server.requests) == 3


def test_server_errors_that_outlive_retries_fail_clearly_and_keep_the_answers_received(fake_llm):
    broken = {"text 3"}
    server = fake_llm(lambda request, number: Status(500, "boom")
                      if request["messages"][-1]["content"] in broken else echo(request, number))
    with pytest.raises(LLMError) as raised:
        LLMClient(endpoint(server.url, max_retries=1)).complete(requests_for(6))
    assert "1 of 6 requests" in raised.value.message and "HTTP 500" in raised.value.message
    assert "5 answers received are cached" in raised.value.hint
    assert sum(r["messages"][-1]["content"] == "text 3" for r in server.requests) == 2  # first try + 1 retry

    broken.clear()  # the server recovers: the rerun only asks what is missing
    before = len(server.requests)
    results, usage = LLMClient(endpoint(server.url, max_retries=1)).complete(requests_for(6))
    assert len(server.requests) - before == 1 and usage.cached == 5
    assert results[3].text == "answer to text 3"


def test_a_hang_past_the_timeout_is_a_clear_error(fake_llm):
    server = fake_llm(lambda request, number: Hang(3))
    with pytest.raises(LLMError, match="no answer from .* within 0.5 s"):
        LLMClient(endpoint(server.url, timeout_s=0.5, max_retries=0)).complete(requests_for(1))


def test_an_unreachable_endpoint_is_a_clear_error():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(LLMError, match="cannot reach http://127.0.0.1") as raised:
        LLMClient(endpoint(f"http://127.0.0.1:{port}/v1", max_retries=1)).complete(requests_for(3))
    assert "llm.base_url" in raised.value.hint and "0 answers received are cached" in raised.value.hint


def test_a_refused_key_names_the_variable_and_is_never_stored(fake_llm, monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", "sk-secret-value")
    server = fake_llm(lambda request, number: Status(401, "invalid key") if number > 2 else "fine")
    client = LLMClient(endpoint(server.url, api_key_env="MY_LLM_KEY", concurrency=1))
    with pytest.raises(LLMError, match="refused the API key") as raised:
        client.complete(requests_for(4))
    assert "MY_LLM_KEY" in raised.value.hint
    assert server.headers[0]["Authorization"] == "Bearer sk-secret-value"
    assert b"sk-secret-value" not in client.cache.path.read_bytes()
    assert len(client.cache) == 2


def test_a_missing_key_for_a_hosted_endpoint_fails_before_any_request(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(LLMError, match="OPENAI_API_KEY is not set"):
        LLMClient(LLMSection())


def test_unknown_model_is_a_clear_error(fake_llm):
    server = fake_llm(lambda request, number: Status(404, "model not found"))
    with pytest.raises(LLMError, match="does not serve model 'scripted'"):
        LLMClient(endpoint(server.url)).complete(requests_for(2))


def test_malformed_and_empty_responses_are_empty_answers_not_crashes(fake_llm):
    replies = {1: Raw(b"this is not json"), 2: completion(""), 3: {"id": "x", "choices": []}, 4: "fine"}
    server = fake_llm(lambda request, number: replies[int(request["messages"][-1]["content"].split()[-1]) + 1])
    results, usage = LLMClient(endpoint(server.url, concurrency=1)).complete(requests_for(4))
    assert [result.text for result in results] == ["", "", "", "fine"]
    assert results[0].error and results[2].error and results[1].error is None
    assert usage.failed == 0


def test_logprobs_are_requested_and_returned(fake_llm):
    tokens = [{"token": "pos", "logprob": -0.1, "top_logprobs": [{"token": "pos", "logprob": -0.1},
                                                                 {"token": "neg", "logprob": -2.4}]}]
    server = fake_llm(lambda request, number: completion("pos", logprobs=tokens))
    results, _ = LLMClient(endpoint(server.url)).complete([ChatRequest.of(None, "x", logprobs=True, top_logprobs=2)])
    assert server.requests[0]["logprobs"] is True and server.requests[0]["top_logprobs"] == 2
    assert results[0].logprobs[0]["top"][1] == {"token": "neg", "logprob": -2.4}


def test_prices_from_table_dated_names_and_overrides():
    assert prices_per_1m_usd(LLMSection(model="gpt-4o-mini")) == (0.15, 0.60)
    assert prices_per_1m_usd(LLMSection(model="gpt-4o-mini-2024-07-18")) == (0.15, 0.60)
    assert prices_per_1m_usd(LLMSection(model="llama3.1:8b")) is None
    custom = LLMSection(model="llama3.1:8b", price_input_per_1m_usd=0.0, price_output_per_1m_usd=0.0)
    assert prices_per_1m_usd(custom) == (0.0, 0.0)
    assert token_cost_usd(1_000_000, 500_000, LLMSection(model="gpt-4o")) == pytest.approx(2.5 + 5.0)
