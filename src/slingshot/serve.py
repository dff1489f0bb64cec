"""`slingshot serve RUN`: a finished run behind HTTP, with dynamic micro-batching of concurrent requests.

Routes: GET /health, GET /v1/model, POST /v1/predict, and an OpenAI-compatible POST /v1/chat/completions so
that any OpenAI client (and `slingshot compare`) can call the model like an LLM. Each task has its routes class:
texts -> labels (classification, regression), question + context -> answer span (extractive QA), prompt or
conversation -> written answer (generation); the request bodies are described in serve_requests.py. Bad requests
get JSON errors (400 malformed JSON, 422 wrong fields, 413 too many or too long inputs, 401 without the bearer
token); the server keeps answering. One log line per request, never its body.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import errno
import json
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from slingshot import __version__
from slingshot.errors import SlingshotError
from slingshot.serve_requests import (
    EXPECTS,
    Decoding,
    RequestError,
    chat_conversation,
    chat_question,
    chat_text,
    prompts_of,
    qa_inputs_of,
    texts_of,
)

log = logging.getLogger("slingshot.serve")


@dataclass
class ServeLimits:
    max_texts_per_request: int = 256
    max_text_chars: int = 20_000
    max_batch_tokens: int = 4096  # estimated at ~4 characters per token, the batcher's budget
    max_wait_ms: float = 5.0
    max_new_tokens: int = 1024  # the most a generation request may ask for (422 beyond)
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
            except Exception as error:  # noqa: BLE001 -- one failed batch fails its requests, never the server
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


def qa_tokens(question: str, context: str, window_tokens: int, stride: int) -> int:
    """Estimated tokens of a question's windows (~4 characters a token): the context cut into windows that share
    `stride` tokens, each also holding the question and 3 special tokens. The batcher's cost of a QA item."""
    question_tokens = len(question) // 4 + 3
    context_tokens = len(context) // 4 + 1
    room = max(window_tokens - question_tokens, stride + 1)  # context tokens per window
    windows = 1 + max(0, -(-(context_tokens - room) // (room - stride)))  # ceiling division
    return windows * question_tokens + context_tokens + (windows - 1) * stride


def usage_tokenizer(tokenizer):
    """A copy of the tokenizer for counting usage on the event loop: the model's worker thread tokenizes with the
    original, and a Rust tokenizer whose truncation settings change in one thread while it encodes in another
    fails ("Already borrowed")."""
    return copy.deepcopy(tokenizer)


@dataclass
class ChatAnswer:
    content: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"


class LabelRoutes:
    """Classification and regression: texts in, labels with probabilities (or scores) out, micro-batched."""

    def __init__(self, predictor, loaded, limits: ServeLimits):
        self.predictor, self.loaded, self.limits = predictor, loaded, limits
        self.batcher = MicroBatcher(predictor.predict, limits, tokens_of=lambda text: len(text) // 4 + 2)
        self.counter = usage_tokenizer(loaded.tokenizer)

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()

    def info(self) -> dict[str, Any]:
        return {"labels": self.predictor.label_names, "batching": self.batcher.stats.to_dict()}

    async def predict(self, body: Any) -> list[dict]:
        return await self.batcher.submit(texts_of(body, self.limits, self.loaded.task.name))

    async def chat(self, body: Any) -> ChatAnswer:
        text = chat_text(body, self.limits)
        result = (await self.batcher.submit([text]))[0]
        answer = result["label"] if "label" in result else f"{result['score']:.6g}"
        return ChatAnswer(answer, len(self.counter(text)["input_ids"]), 1)


class QARoutes:
    """Extractive QA: (question, context) pairs in, answer spans out. Micro-batched like texts, each pair costing
    the tokens of the windows the task cuts it into."""

    def __init__(self, predictor, loaded, limits: ServeLimits):
        self.predictor, self.loaded, self.limits = predictor, loaded, limits
        stride = loaded.recipe.qa.stride
        self.batcher = MicroBatcher(predictor.predict, limits,
                                    tokens_of=lambda pair: qa_tokens(*pair, predictor.max_length, stride))
        self.counter = usage_tokenizer(loaded.tokenizer)

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()

    def info(self) -> dict[str, Any]:
        qa = self.loaded.recipe.qa
        return {"inputs": ["question", "context"], "window_tokens": self.predictor.max_length, "stride": qa.stride,
                "max_answer_tokens": qa.max_answer_tokens, "batching": self.batcher.stats.to_dict()}

    async def predict(self, body: Any) -> list[dict]:
        return await self.batcher.submit(qa_inputs_of(body, self.limits))

    async def chat(self, body: Any) -> ChatAnswer:
        question, context = chat_question(body, self.limits)
        result = (await self.batcher.submit([(question, context)]))[0]
        prompt_tokens = len(self.counter(question, context)["input_ids"])
        answer_tokens = len(self.counter(result["answer"], add_special_tokens=False)["input_ids"])
        return ChatAnswer(result["answer"], prompt_tokens, answer_tokens)


class GenerationRoutes:
    """Generation: prompts or a conversation in, written answers out, one request at a time.

    Requests are not batched together: a request's answer then never depends on what else is in flight (greedy
    decoding gives what `slingshot predict` gives, a seed gives the same sample), and requests with different
    decoding options need no grouping. The prompts of one request are still batched by `generate_answers`. The
    model runs in one worker thread, which serialises requests like a lock, so the event loop keeps answering
    /health and queueing requests meanwhile.
    """

    def __init__(self, predictor, loaded, limits: ServeLimits):
        self.predictor, self.loaded, self.limits = predictor, loaded, limits
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slingshot-generate")
        self.requests = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.executor.shutdown(wait=True)

    def info(self) -> dict[str, Any]:
        settings = self.predictor.settings
        return {"inputs": ["prompt", "prompts", "messages"], "max_prompt_tokens": self.predictor.max_length,
                "max_new_tokens_limit": self.limits.max_new_tokens,
                "generation": {"max_new_tokens": settings.max_new_tokens, "temperature": settings.temperature,
                               "top_p": settings.top_p},
                "batching": {"mode": "one request at a time", "requests": self.requests}}

    def _generate(self, conversations: list[list[dict[str, str]]], decoding: Decoding) -> list[dict]:
        """Runs in the worker thread: templates, token limits (413) and decoding."""
        prompts = [self.predictor.encode(messages) for messages in conversations]
        for index, prompt in enumerate(prompts):
            if len(prompt) > self.predictor.max_length:
                raise RequestError(413, f"prompt {index} has {len(prompt):,} tokens with the chat template; this "
                                        f"run's limit is {self.predictor.max_length:,} (model.max_length)")
        return self.predictor.generate(prompts, max_new_tokens=decoding.max_new_tokens,
                                       temperature=decoding.temperature, top_p=decoding.top_p, seed=decoding.seed)

    async def _run(self, conversations: list[list[dict[str, str]]], decoding: Decoding) -> list[dict]:
        results = await asyncio.get_running_loop().run_in_executor(self.executor, self._generate, conversations,
                                                                   decoding)
        self.requests += 1
        return results

    async def predict(self, body: Any) -> list[dict]:
        prompts, decoding = prompts_of(body, self.limits)
        return await self._run([self.predictor.conversation(prompt) for prompt in prompts], decoding)

    async def chat(self, body: Any) -> ChatAnswer:
        messages, decoding = chat_conversation(body, self.limits)
        result = (await self._run([self.predictor.conversation(messages)], decoding))[0]
        return ChatAnswer(result["text"], result["prompt_tokens"], result["completion_tokens"],
                          "stop" if result["stopped_at_eos"] else "length")


def routes_for(predictor, loaded, limits: ServeLimits):
    """The routes of the run's task: what /v1/predict and /v1/chat/completions read and answer."""
    kinds = {"classification": LabelRoutes, "regression": LabelRoutes, "extractive_qa": QARoutes,
             "generation": GenerationRoutes, "seq2seq": GenerationRoutes}
    return kinds[loaded.task.name](predictor, loaded, limits)


def build_app(predictor, loaded, limits: ServeLimits):
    """The Starlette application serving `predictor` (from slingshot.predictor.load_predictor) for the run `loaded`."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    routes = routes_for(predictor, loaded, limits)
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
        return JSONResponse({"model": model_name, "task": loaded.task.name, "backend": predictor.backend,
                             "expects": EXPECTS[loaded.task.name], **routes.info(), "metrics": eval_metrics,
                             "slingshot": __version__})

    async def predict(request: Request) -> JSONResponse:
        if not authorised(request):
            return error(401, "missing or wrong bearer token")
        try:
            results = await routes.predict(await read_json(request))
        except RequestError as problem:
            return error(problem.status, problem.message, problem.field_name)
        return JSONResponse({"model": model_name, "predictions": results})

    async def chat(request: Request) -> JSONResponse:
        if not authorised(request):
            return error(401, "missing or wrong bearer token")
        try:
            answer = await routes.chat(await read_json(request))
        except RequestError as problem:
            return error(problem.status, problem.message, problem.field_name)
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": model_name,
            "choices": [{"index": 0, "finish_reason": answer.finish_reason,
                         "message": {"role": "assistant", "content": answer.content}}],
            "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                      "total_tokens": answer.prompt_tokens + answer.completion_tokens},
        })

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await routes.start()
        yield
        await routes.stop()

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

    logged.routes = routes  # type: ignore[attr-defined]
    return logged


def serve(run_path: str, host: str, port: int, limits: ServeLimits, backend: str = "torch",
          precision: str = "fp32", int8: bool = False, threads: int | None = None) -> None:
    """Load the run and serve it until interrupted; uvicorn finishes requests in flight on shutdown."""
    import torch
    import uvicorn

    from slingshot.evaluate import load_run
    from slingshot.predictor import load_predictor
    from slingshot.train import default_threads

    sock = bind_socket(host, port)  # before the model loads: a taken port is a clear error at once
    loaded = load_run(run_path, threads=threads)
    torch.set_num_threads(threads or default_threads())
    predictor = load_predictor(loaded, backend=backend, precision=precision, int8=int8, threads=threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    app = build_app(predictor, loaded, limits)
    port = sock.getsockname()[1]  # --port 0: the one the OS picked
    log.info("serving %s (%s) on http://%s:%d", loaded.run.path, predictor.name, host, port)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)
    uvicorn.Server(config).run(sockets=[sock])


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port, or one clear error (port taken, address not on this machine)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        reason = "the port is in use" if error.errno == errno.EADDRINUSE else (error.strerror or str(error))
        raise SlingshotError(f"cannot listen on {host}:{port}: {reason}",
                             "pick another --port, or stop the program that holds it") from None
    return sock


def auth_token_from_env(variable: str | None) -> str | None:
    return os.environ.get(variable) if variable else None
