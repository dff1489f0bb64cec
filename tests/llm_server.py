"""A real HTTP server on 127.0.0.1 speaking the OpenAI chat-completions protocol, with scripted behaviour.

`reply(request_json, call_number)` decides each answer and returns one of:
    "text"                      200 with that text as the assistant message
    Status(code, message)       that HTTP status with an OpenAI-style error body
    Hang(seconds)               sleep (past the client's timeout), then answer "late"
    Raw(body)                   200 with this body as is (malformed responses)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Status:
    code: int
    message: str = "scripted error"


@dataclass
class Hang:
    seconds: float


@dataclass
class Raw:
    body: bytes


def completion(text: str, prompt_tokens: int = 20, completion_tokens: int = 3, logprobs: list | None = None) -> dict:
    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": text}}
    if logprobs is not None:
        choice["logprobs"] = {"content": logprobs}
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": "scripted",
            "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


class FakeLLM:
    def __init__(self, reply: Callable[[dict, int], Any]):
        self.reply = reply
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server._lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    number = len(server.requests)
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                answer = server.reply(body, number)
                if isinstance(answer, Hang):
                    time.sleep(answer.seconds)
                    answer = "late"
                if isinstance(answer, Status):
                    # a short server-directed delay keeps retry tests fast (the client honours retry-after-ms)
                    headers = {"retry-after-ms": "5"} if answer.code == 429 or answer.code >= 500 else {}
                    return self._send(answer.code, {"error": {"message": answer.message, "type": "scripted"}}, headers)
                if isinstance(answer, Raw):
                    return self._send_bytes(200, answer.body)
                if isinstance(answer, dict):
                    return self._send(200, answer)
                return self._send(200, completion(str(answer)))

            def _send(self, code: int, payload: dict, headers: dict | None = None):
                self._send_bytes(code, json.dumps(payload).encode(), headers)

            def _send_bytes(self, code: int, data: bytes, headers: dict | None = None):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def user_prompts(self) -> list[str]:
        return [request["messages"][-1]["content"] for request in self.requests]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
