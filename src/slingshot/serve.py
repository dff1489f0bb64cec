"""`slingshot serve RUN`: a finished run behind HTTP, with dynamic micro-batching of concurrent requests.

Routes: GET /health, GET /v1/model, POST /v1/predict, and an OpenAI-compatible POST /v1/chat/completions so
that any OpenAI client (and `slingshot compare`) can call the model like an LLM. Bad requests get JSON errors
(400 malformed JSON, 422 wrong fields, 413 too many or too long texts, 401 without the bearer token); the
server keeps answering. One log line per request, never its body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from slingshot import __version__

log = logging.getLogger("slingshot.serve")


@dataclass
class ServeLimits:
    max_texts_per_request: int = 256
    max_text_chars: int = 20_000
    max_batch_tokens: int = 4096  # estimated at ~4 characters per token, the batcher's budget
    max_wait_ms: float = 5.0
    auth_token: str | None = None


@dataclass
class _Pending:
    items: list[Any]
    future: asyncio.Future
    tokens: int


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    recent_sizes: deque = field(default_factory=lambda: deque(maxlen=1000))

    def to_dict(self) -> dict[str, Any]:
        sizes = list(self.recent_sizes)
        return {"batches": self.batches, "items": self.items, "max_batch_items": max(sizes, default=0),
                "mean_batch_items": round(sum(sizes) / len(sizes), 2) if sizes else 0.0}


class MicroBatcher:
    """Gathers the items of concurrent requests into one model call: it waits up to `max_wait_ms` after the
    first request for others, or until `max_batch_tokens` are queued, then answers every request from one batch.
    The model runs in one worker thread, so the event loop keeps accepting requests meanwhile."""

    def __init__(self, predict: Callable[[list[Any]], list[Any]], limits: ServeLimits,
                 tokens_of: Callable[[Any], int]):
        self.predict = predict
        self.limits = limits
        self.tokens_of = tokens_of
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slingshot-model")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=True)

    async def submit(self, items: list[Any]) -> list[Any]:
        assert self._queue is not None, "start() first"
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(items, future, sum(self.tokens_of(item) for item in items)))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            group = [await self._queue.get()]
            tokens = group[0].tokens
            deadline = loop.time() + self.limits.max_wait_ms / 1000
            while tokens < self.limits.max_batch_tokens:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    pending = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
                group.append(pending)
                tokens += pending.tokens
            items = [item for pending in group for item in pending.items]
            try:
                results = await loop.run_in_executor(self._executor, self.predict, items)
            except Exception as error:  # one failed batch fails its requests, never the server
                for pending in group:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            self.stats.batches += 1
            self.stats.items += len(items)
            self.stats.recent_sizes.append(len(items))
            start = 0
            for pending in group:
                if not pending.future.done():
                    pending.future.set_result(results[start:start + len(pending.items)])
                start += len(pending.items)


class RequestError(Exception):
    def __init__(self, status: int, message: str, field_name: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field_name = status, message, field_name


def _texts_of(body: Any, limits: ServeLimits) -> list[str]:
    """The texts of a /v1/predict body: {"texts": [...]} or {"text": "..."}; raises RequestError naming the field."""
    if not isinstance(body, dict):
        raise RequestError(422, "the body must be a JSON object with 'texts' (a list of strings) or 'text'")
    unknown = set(body) - {"texts", "text"}
    if unknown:
        name = min(unknown)
        raise RequestError(422, f"unknown field '{name}'; send 'texts' or 'text'", name)
    if "texts" in body:
        texts = body["texts"]
        if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
            raise RequestError(422, "'texts' must be a list of strings", "texts")
    elif "text" in body:
        if not isinstance(body["text"], str):
            raise RequestError(422, "'text' must be a string", "text")
        texts = [body["text"]]
    else:
        raise RequestError(422, "missing field 'texts' (a list of strings) or 'text'", "texts")
    if not texts:
        raise RequestError(422, "'texts' is empty", "texts")
    if len(texts) > limits.max_texts_per_request:
        raise RequestError(413, f"{len(texts)} texts in one request; the limit is {limits.max_texts_per_request}")
    for index, text in enumerate(texts):
        if len(text) > limits.max_text_chars:
            raise RequestError(413, f"text {index} has {len(text):,} characters; the limit is "
                                    f"{limits.max_text_chars:,}")
    return texts


_PROMPT_TEXT = re.compile(r"Text: (.*?)\n(?:Second text: .*\n)?Label:\s*$", re.DOTALL)


def chat_text(body: Any, limits: ServeLimits) -> str:
    """The text to classify from a chat-completions body: the last user message, or, when it is a prompt in
    Slingshot's own format (compare's LLM baseline), the text after its last 'Text: '."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
        raise RequestError(422, "'messages' must be a non-empty list of {role, content}", "messages")
    users = [m for m in body["messages"] if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1].get("content"), str):
        raise RequestError(422, "no user message with string content in 'messages'", "messages")
    content = users[-1]["content"]
    found = _PROMPT_TEXT.search(content)
    text = found.group(1).rsplit("Text: ", 1)[-1] if found else content
    if len(text) > limits.max_text_chars:
        raise RequestError(413, f"the message has {len(text):,} characters; the limit is {limits.max_text_chars:,}")
    return text


def build_app(predictor, loaded, limits: ServeLimits):
    """The Starlette application serving `predictor` (a slingshot.predictor.Predictor) for the run `loaded`."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    batcher = MicroBatcher(predictor.predict, limits, tokens_of=lambda text: len(text) // 4 + 2)
    metrics_path = loaded.run.metrics
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    model_name = f"slingshot/{loaded.run.path.name}"

    def error(status: int, message: str, field_name: str | None = None) -> JSONResponse:
        payload: dict[str, Any] = {"error": {"message": message, "status": status}}
        if field_name:
            payload["error"]["field"] = field_name
        return JSONResponse(payload, status_code=status)

    async def read_json(request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as problem:
            raise RequestError(400, f"malformed JSON: {problem}") from problem

    def authorised(request: Request) -> bool:
        return limits.auth_token is None or request.headers.get("authorization") == f"Bearer {limits.auth_token}"

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def model_info(request: Request) -> JSONResponse:
        if not authorised(request):
            return error(401, "missing or wrong bearer token")
        eval_metrics = {k: v for k, v in metrics.get("eval", {}).items() if isinstance(v, (int, float))}
        return JSONResponse({"model": model_name, "task": loaded.task.name, "labels": predictor.label_names,
                             "backend": predictor.backend, "metrics": eval_metrics, "slingshot": __version__,
                             "batching": batcher.stats.to_dict()})

    async def predict(request: Request) -> JSONResponse:
        if not authorised(request):
            return error(401, "missing or wrong bearer token")
        try:
            texts = _texts_of(await read_json(request), limits)
        except RequestError as problem:
            return error(problem.status, problem.message, problem.field_name)
        results = await batcher.submit(texts)
        return JSONResponse({"model": model_name, "predictions": results})

    async def chat(request: Request) -> JSONResponse:
        if not authorised(request):
            return error(401, "missing or wrong bearer token")
        try:
            text = chat_text(await read_json(request), limits)
        except RequestError as problem:
            return error(problem.status, problem.message, problem.field_name)
        result = (await batcher.submit([text]))[0]
        answer = result["label"] if "label" in result else f"{result['score']:.6g}"
        prompt_tokens = len(loaded.tokenizer(text)["input_ids"])
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": model_name,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 1, "total_tokens": prompt_tokens + 1},
        })

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    app = Starlette(routes=[Route("/health", health), Route("/v1/model", model_info),
                            Route("/v1/predict", predict, methods=["POST"]),
                            Route("/v1/chat/completions", chat, methods=["POST"])], lifespan=lifespan)

    async def logged(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 500}

        async def capture(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await app(scope, receive, capture)
        finally:
            log.info("%s %s %d %.1f ms", scope["method"], scope["path"], status["code"],
                     (time.perf_counter() - start) * 1000)

    logged.batcher = batcher  # type: ignore[attr-defined]
    return logged


def serve(run_path: str, host: str, port: int, limits: ServeLimits, backend: str = "torch",
          precision: str = "fp32", int8: bool = False, threads: int | None = None) -> None:
    """Load the run and serve it until interrupted; uvicorn finishes requests in flight on shutdown."""
    import torch
    import uvicorn

    from slingshot.evaluate import load_run
    from slingshot.predictor import Predictor
    from slingshot.train import default_threads

    loaded = load_run(run_path, threads=threads)
    torch.set_num_threads(threads or default_threads())
    predictor = Predictor(loaded, backend=backend, precision=precision, int8=int8, threads=threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    app = build_app(predictor, loaded, limits)
    log.info("serving %s (%s) on http://%s:%d", loaded.run.path, predictor.name, host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)


def auth_token_from_env(variable: str | None) -> str | None:
    return os.environ.get(variable) if variable else None
