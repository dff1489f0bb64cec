"""The one client for OpenAI-compatible chat-completions endpoints, shared by `compare`, `docs2qa` and `label`.

What it adds to the `openai` package (which already retries 429, 408, 409, 5xx, timeouts and dropped connections
with exponential back-off, honouring Retry-After): a concurrency limit, an on-disk response cache so that a rerun
or a resumed run costs nothing and reproduces the same numbers, token usage per answer, and failures turned into
one clear error after every answer that did arrive has been cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from slingshot.errors import SlingshotError
from slingshot.recipe import LLMSection

# USD per million (prompt, completion) tokens, from https://openai.com/api/pricing (standard tier, as published
# in 2025). Only used when the recipe gives no price; a model not listed has an unknown cost until priced.
PRICES_PER_1M_USD: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-3.5-turbo": (0.50, 1.50),
}


class LLMError(SlingshotError):
    """The endpoint could not be used: unreachable, refused the key, unknown model, or requests kept failing."""


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to ask for. `sample` tells apart repeated samples of the same prompt in the cache."""

    messages: tuple[tuple[str, str], ...]  # (role, content) pairs
    temperature: float | None = None  # None: the endpoint section's temperature
    response_format: dict[str, Any] | None = None  # e.g. {"type": "json_object"} or a json_schema
    logprobs: bool = False
    top_logprobs: int | None = None
    sample: int = 0

    @staticmethod
    def of(system: str | None, user: str, **options: Any) -> ChatRequest:
        messages = ((("system", system),) if system else ()) + (("user", user),)
        return ChatRequest(messages=messages, **options)


@dataclass
class ChatResult:
    """An answer as the endpoint gave it. `error` is set (and `text` empty) when the response was unusable."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0  # as first observed, retries included; a cached answer keeps its original latency
    finish_reason: str | None = None
    logprobs: list[dict[str, Any]] | None = None  # per token: {"token", "logprob", "top": [{"token", "logprob"}]}
    cached: bool = False
    error: str | None = None

    def to_cache(self) -> dict[str, Any]:
        return {"text": self.text, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "latency_s": self.latency_s, "finish_reason": self.finish_reason, "logprobs": self.logprobs}


@dataclass
class Usage:
    """What a batch of requests consumed and how many came from the cache."""

    requests: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failed: int = 0
    wall_s: float = 0.0
    failures: list[str] = field(default_factory=list)

    def cost_usd(self, endpoint: LLMSection) -> float | None:
        return token_cost_usd(self.prompt_tokens, self.completion_tokens, endpoint)


def slingshot_home() -> Path:
    """Where Slingshot keeps caches: $SLINGSHOT_HOME, else ~/.cache/slingshot."""
    return Path(os.environ.get("SLINGSHOT_HOME") or Path.home() / ".cache" / "slingshot")


def prices_per_1m_usd(endpoint: LLMSection) -> tuple[float, float] | None:
    """(prompt, completion) USD per million tokens: the recipe's, else the built-in table's, else None."""
    table = PRICES_PER_1M_USD.get(endpoint.model) or PRICES_PER_1M_USD.get(_dated_model_family(endpoint.model))
    prompt = endpoint.price_input_per_1m_usd if endpoint.price_input_per_1m_usd is not None else (table or (None,))[0]
    completion = (endpoint.price_output_per_1m_usd if endpoint.price_output_per_1m_usd is not None
                  else (table or (None, None))[1])
    if prompt is None or completion is None:
        return None
    return prompt, completion


def token_cost_usd(prompt_tokens: int, completion_tokens: int, endpoint: LLMSection) -> float | None:
    prices = prices_per_1m_usd(endpoint)
    if prices is None:
        return None
    return (prompt_tokens * prices[0] + completion_tokens * prices[1]) / 1e6


def _dated_model_family(model: str) -> str:
    # "gpt-4o-mini-2024-07-18" is priced as "gpt-4o-mini"
    parts = model.split("-")
    while parts and parts[-1].isdigit():
        parts.pop()
    return "-".join(parts)


class ResponseCache:
    """Answers on disk in SQLite, keyed by endpoint, model, messages and sampling parameters. Thread-safe."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, created REAL, response TEXT)")
        self._db.commit()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, response: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?)",
                             (key, time.time(), json.dumps(response)))
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class LLMClient:
    """Asks many chat completions of one endpoint, `concurrency` at a time, through the cache.

    Raises:
        LLMError: the endpoint is unreachable, refuses the key, does not know the model, rejects the request,
            or some requests still failed after their retries. Every answer received before is cached first,
            so running the same command again resumes where this one stopped.
    """

    def __init__(self, endpoint: LLMSection, cache_path: Path | None = None):
        import openai

        self.endpoint = endpoint
        self.base_url = endpoint.base_url.rstrip("/")
        self.cache = ResponseCache(cache_path or slingshot_home() / "llm-cache.sqlite")
        self._client = openai.OpenAI(base_url=self.base_url, api_key=self._api_key(),
                                     timeout=endpoint.timeout_s, max_retries=endpoint.max_retries)

    def _api_key(self) -> str:
        key = os.environ.get(self.endpoint.api_key_env)
        if key:
            return key
        host = urlparse(self.base_url).hostname or ""
        if host.endswith(("openai.com", "azure.com")):
            raise LLMError(f"environment variable {self.endpoint.api_key_env} is not set ({self.base_url} needs a key)",
                           f"export {self.endpoint.api_key_env}=<your key>, or name another variable in "
                           "llm.api_key_env")
        # Local servers (vLLM, Ollama, llama.cpp) usually take any key; the client insists on one.
        return "not-needed"

    def cache_key(self, request: ChatRequest) -> str:
        params = {
            "base_url": self.base_url, "model": self.endpoint.model,
            "messages": [list(message) for message in request.messages],
            "temperature": self._temperature(request), "max_tokens": self.endpoint.max_tokens,
            "response_format": request.response_format, "logprobs": request.logprobs,
            "top_logprobs": request.top_logprobs, "sample": request.sample,
        }
        return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()

    def _temperature(self, request: ChatRequest) -> float:
        return self.endpoint.temperature if request.temperature is None else request.temperature

    def complete(
        self, requests: list[ChatRequest], on_result: Callable[[int, ChatResult], None] | None = None
    ) -> tuple[list[ChatResult], Usage]:
        """Answers in request order, and the usage of the batch. See the class docstring for what raises."""
        start = time.perf_counter()
        results: list[ChatResult | None] = [None] * len(requests)
        fatal: list[LLMError] = []
        usage = Usage(requests=len(requests))
        lock = threading.Lock()

        def work(index: int) -> None:
            request = requests[index]
            key = self.cache_key(request)
            hit = self.cache.get(key)
            if hit is not None:
                result = ChatResult(**hit, cached=True)
            elif fatal:
                return  # the endpoint is unusable: do not send what is still queued
            else:
                try:
                    result = self._ask(request)
                except LLMError as error:
                    with lock:
                        fatal.append(error)
                    return
                if result.error is None:
                    self.cache.put(key, result.to_cache())
            with lock:
                results[index] = result
                usage.cached += result.cached
                usage.prompt_tokens += result.prompt_tokens
                usage.completion_tokens += result.completion_tokens
                if result.error and result.error.startswith("failed"):
                    usage.failed += 1
                    usage.failures.append(result.error)
            if on_result is not None:
                on_result(index, result)

        with ThreadPoolExecutor(max_workers=self.endpoint.concurrency) as pool:
            list(pool.map(work, range(len(requests))))
        usage.wall_s = time.perf_counter() - start

        received = sum(result is not None and result.error is None for result in results)
        resume = (f"the {received} answers received are cached in {self.cache.path}; "
                  "running the same command again resumes from there")
        if fatal:
            raise LLMError(fatal[0].message, f"{fatal[0].hint}; {resume}")
        if usage.failed:
            raise LLMError(f"{usage.failed} of {len(requests)} requests to {self.base_url} failed after "
                           f"{self.endpoint.max_retries} retries ({usage.failures[0]})",
                           f"{resume}; lower llm.concurrency or raise llm.max_retries if the endpoint is rate limiting")
        return results, usage  # type: ignore[return-value]

    def _ask(self, request: ChatRequest) -> ChatResult:
        import openai

        options: dict[str, Any] = {}
        if request.response_format is not None:
            options["response_format"] = request.response_format
        if request.logprobs:
            options["logprobs"] = True
            if request.top_logprobs:
                options["top_logprobs"] = request.top_logprobs
        start = time.perf_counter()
        try:
            response = self._client.chat.completions.create(
                model=self.endpoint.model,
                messages=[{"role": role, "content": content} for role, content in request.messages],
                temperature=self._temperature(request), max_tokens=self.endpoint.max_tokens, **options,
            )
        except openai.AuthenticationError as error:
            raise LLMError(f"{self.base_url} refused the API key (HTTP {error.status_code})",
                           f"set {self.endpoint.api_key_env} to a valid key for this endpoint") from error
        except openai.PermissionDeniedError as error:
            raise LLMError(f"{self.base_url} denied access to model '{self.endpoint.model}' (HTTP 403)",
                           "check that your key may use this model") from error
        except openai.NotFoundError as error:
            raise LLMError(f"{self.base_url} does not serve model '{self.endpoint.model}' (HTTP 404)",
                           "check llm.model and that llm.base_url ends in /v1") from error
        except openai.BadRequestError as error:
            raise LLMError(f"{self.base_url} rejected the request (HTTP 400: {_server_message(error)})",
                           "check llm.model and the request options your endpoint supports") from error
        except openai.APITimeoutError as error:
            raise LLMError(f"no answer from {self.base_url} within {self.endpoint.timeout_s:g} s, "
                           f"{self.endpoint.max_retries} retries included",
                           "raise llm.timeout_s, or check that the server is not overloaded") from error
        except openai.APIConnectionError as error:
            raise LLMError(f"cannot reach {self.base_url} after {self.endpoint.max_retries} retries "
                           f"({error.__cause__ or error})",
                           "check llm.base_url and that the server is running") from error
        except openai.APIStatusError as error:
            # 429 and 5xx that outlived their retries: this request failed, the others go on.
            return ChatResult(text="", error=f"failed: HTTP {error.status_code}: {_server_message(error)}")
        except (openai.APIResponseValidationError, ValueError) as error:
            return ChatResult(text="", error=f"malformed response: {error}")
        latency_s = time.perf_counter() - start
        return _parse_response(response, latency_s)


def _parse_response(response: Any, latency_s: float) -> ChatResult:
    """A ChatResult from a chat-completions response; a response without a usable message is empty, not fatal."""
    if isinstance(response, str) or not getattr(response, "choices", None):
        return ChatResult(text="", latency_s=latency_s, error="malformed response: no choices")
    choice = response.choices[0]
    message = getattr(choice, "message", None)
    text = (getattr(message, "content", None) or "") if message is not None else ""
    usage = getattr(response, "usage", None)
    logprobs = None
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if content:
        logprobs = [{"token": item.token, "logprob": item.logprob,
                     "top": [{"token": top.token, "logprob": top.logprob} for top in (item.top_logprobs or [])]}
                    for item in content]
    return ChatResult(
        text=text,
        prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
        completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
        latency_s=latency_s, finish_reason=getattr(choice, "finish_reason", None), logprobs=logprobs,
    )


def _server_message(error: Any) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:200]
    return str(getattr(error, "message", error))[:200]
