"""Reading the bodies `slingshot serve` receives: what each task's run expects, checked field by field.

Every problem is a RequestError with the HTTP status, a message naming the field and what this run expects, and
the field's name: 422 for a wrong or missing field, 413 for too many or too long inputs.

/v1/predict, per task (one input, or a list):
    classification, regression  {"text": "..."}                  or {"texts": ["...", ...]}
    extractive_qa               {"question": "...", "context": "..."}  or {"inputs": [{"question", "context"}, ...]}
    generation                  {"prompt": "..."}                or {"prompts": ["...", ...]}
                                with optional max_new_tokens, temperature, top_p, seed
/v1/chat/completions (OpenAI's body; fields it does not use are ignored):
    classification  the last user message is the text (or the text of a `compare` prompt)
    extractive_qa   the last user message is the question; the context is the last system message, or, without one,
                    the user message is "<context>\\n\\nQuestion: <question>" (docs2qa's chat format with context)
    generation      the whole conversation, through the run's chat template; max_tokens (or max_completion_tokens),
                    temperature, top_p, seed
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

FIELDS = {
    "classification": ("texts", "text"),
    "regression": ("texts", "text"),
    "extractive_qa": ("question", "context", "inputs"),
    "generation": ("prompt", "prompts", "max_new_tokens", "temperature", "top_p", "seed"),
}
FIELDS["seq2seq"] = FIELDS["generation"]
EXPECTS = {
    "classification": "send texts (a list of strings) or text",
    "regression": "send texts (a list of strings) or text",
    "extractive_qa": "send question and context (strings), or inputs (a list of {question, context} objects)",
    "generation": "send prompt (a string) or prompts (a list of strings), optionally max_new_tokens, temperature, "
                  "top_p, seed",
}
EXPECTS["seq2seq"] = EXPECTS["generation"]
QUESTION_MARK = "\n\nQuestion: "  # docs2qa writes a question with its context as "<context>\n\nQuestion: <question>"
TEMPERATURE_RANGE = (0.0, 2.0)  # OpenAI's range


class RequestError(Exception):
    def __init__(self, status: int, message: str, field_name: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field_name = status, message, field_name


@dataclass
class Decoding:
    """Decoding options of one generation request; None = the run's recipe."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None


def _object(body: Any, task: str) -> dict:
    """The body as a JSON object with only this task's fields."""
    if not isinstance(body, dict):
        raise RequestError(422, f"the body must be a JSON object; this run is {task}: {EXPECTS[task]}")
    unknown = sorted(set(body) - set(FIELDS[task]))
    if unknown:
        raise RequestError(422, f"unknown field '{unknown[0]}'; this run is {task}: {EXPECTS[task]}", unknown[0])
    return body


def _strings(body: dict, many: str, one: str, task: str, limits) -> list[str]:
    """The strings of `many` (a list) or `one` (a string), checked against the count and length limits."""
    if many in body and one in body:
        raise RequestError(422, f"send either '{many}' or '{one}', not both", many)
    if many in body:
        values = body[many]
        if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
            raise RequestError(422, f"'{many}' must be a list of strings", many)
        if not values:
            raise RequestError(422, f"'{many}' is empty", many)
    elif one in body:
        if not isinstance(body[one], str):
            raise RequestError(422, f"'{one}' must be a string", one)
        values = [body[one]]
    else:
        raise RequestError(422, f"missing field '{many}' or '{one}'; this run is {task}: {EXPECTS[task]}", many)
    _check_count(len(values), many, limits)
    for index, value in enumerate(values):
        _check_length(value, f"{one} {index}", limits)
    return values


def _check_count(count: int, name: str, limits) -> None:
    if count > limits.max_texts_per_request:
        raise RequestError(413, f"{count} {name} in one request; the limit is {limits.max_texts_per_request}", name)


def _check_length(value: str, what: str, limits) -> None:
    if len(value) > limits.max_text_chars:
        raise RequestError(413, f"{what} has {len(value):,} characters; the limit is {limits.max_text_chars:,}")


def texts_of(body: Any, limits, task: str = "classification") -> list[str]:
    """The texts of a classification or regression request: {"texts": [...]} or {"text": "..."}."""
    return _strings(_object(body, task), "texts", "text", task, limits)


def qa_inputs_of(body: Any, limits) -> list[tuple[str, str]]:
    """The (question, context) pairs of an extractive-QA request: {"question", "context"} or {"inputs": [...]}."""
    task = "extractive_qa"
    body = _object(body, task)
    if "inputs" in body:
        if "question" in body or "context" in body:
            raise RequestError(422, "send either 'inputs' or 'question' and 'context', not both", "inputs")
        inputs = body["inputs"]
        if not isinstance(inputs, list) or not inputs:
            raise RequestError(422, "'inputs' must be a non-empty list of {question, context} objects", "inputs")
        _check_count(len(inputs), "inputs", limits)
        return [_qa_pair(item, f"inputs[{index}]", limits) for index, item in enumerate(inputs)]
    missing = [name for name in ("question", "context") if name not in body]
    if missing:
        raise RequestError(422, f"missing field '{missing[0]}'; this run is {task}: {EXPECTS[task]}", missing[0])
    return [_qa_pair(body, "", limits)]


def _qa_pair(item: Any, where: str, limits) -> tuple[str, str]:
    prefix = f"{where}." if where else ""
    if not isinstance(item, dict):
        raise RequestError(422, f"'{where}' must be a {{question, context}} object", where)
    values = []
    for name in ("question", "context"):
        value = item.get(name)
        if not isinstance(value, str):
            raise RequestError(422, f"'{prefix}{name}' must be a string", prefix + name)
        if not value.strip():
            raise RequestError(422, f"'{prefix}{name}' is empty", prefix + name)
        _check_length(value, f"{prefix}{name}", limits)
        values.append(value)
    extra = sorted(set(item) - {"question", "context"})
    if where and extra:
        raise RequestError(422, f"unknown field '{prefix}{extra[0]}'; each input has question and context",
                           prefix + extra[0])
    return values[0], values[1]


def prompts_of(body: Any, limits) -> tuple[list[str], Decoding]:
    """The prompts and decoding options of a generation request: {"prompt"} or {"prompts": [...]}, options."""
    body = _object(body, "generation")
    prompts = _strings(body, "prompts", "prompt", "generation", limits)
    for index, prompt in enumerate(prompts):
        if not prompt.strip():
            raise RequestError(422, f"prompt {index} is empty", "prompts" if "prompts" in body else "prompt")
    return prompts, decoding_of(body, limits, max_tokens_fields=("max_new_tokens",))


def decoding_of(body: dict, limits, max_tokens_fields: tuple[str, ...]) -> Decoding:
    """Decoding options of a body, each checked against its range (422 naming it)."""
    decoding = Decoding()
    for name in max_tokens_fields:
        if body.get(name) is not None:
            value = body[name]
            if not _is_int(value) or not 1 <= value <= limits.max_new_tokens:
                raise RequestError(422, f"'{name}' must be an integer from 1 to {limits.max_new_tokens}", name)
            decoding.max_new_tokens = value
    if body.get("temperature") is not None:
        value = body["temperature"]
        low, high = TEMPERATURE_RANGE
        if not _is_number(value) or not low <= value <= high:
            raise RequestError(422, f"'temperature' must be a number from {low:g} to {high:g} (0 = greedy)",
                               "temperature")
        decoding.temperature = float(value)
    if body.get("top_p") is not None:
        value = body["top_p"]
        if not _is_number(value) or not 0 < value <= 1:
            raise RequestError(422, "'top_p' must be a number above 0 and at most 1", "top_p")
        decoding.top_p = float(value)
    if body.get("seed") is not None:
        if not _is_int(body["seed"]) or body["seed"] < 0:
            raise RequestError(422, "'seed' must be a non-negative integer", "seed")
        decoding.seed = body["seed"]
    return decoding


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------------------ chat completions


def _messages(body: Any) -> list[dict]:
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
        raise RequestError(422, "'messages' must be a non-empty list of {role, content}", "messages")
    if body.get("stream"):
        raise RequestError(422, "streaming is not supported; send stream: false", "stream")
    return body["messages"]


def _last_user_content(messages: list) -> str:
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1].get("content"), str):
        raise RequestError(422, "no user message with string content in 'messages'", "messages")
    return users[-1]["content"]


_PROMPT_TEXT = re.compile(r"Text: (.*?)\n(?:Second text: .*\n)?Label:\s*$", re.DOTALL)


def chat_text(body: Any, limits) -> str:
    """The text to classify from a chat-completions body: the last user message, or, when it is a prompt in
    Slingshot's own format (compare's LLM baseline), the text after its last 'Text: '."""
    content = _last_user_content(_messages(body))
    found = _PROMPT_TEXT.search(content)
    text = found.group(1).rsplit("Text: ", 1)[-1] if found else content
    _check_length(text, "the message", limits)
    return text


def chat_question(body: Any, limits) -> tuple[str, str]:
    """The question and context of a chat-completions body for an extractive-QA run (see the module doc)."""
    messages = _messages(body)
    question = _last_user_content(messages)
    systems = [m for m in messages if isinstance(m, dict) and m.get("role") == "system"]
    if systems and isinstance(systems[-1].get("content"), str) and systems[-1]["content"].strip():
        context = systems[-1]["content"]
    elif QUESTION_MARK in question:
        context, question = question.rsplit(QUESTION_MARK, 1)
    else:
        raise RequestError(422, "this run is extractive_qa: put the context in a system message and the question "
                                "in the last user message, or write the user message as "
                                "'<context>\\n\\nQuestion: <question>'", "messages")
    return _qa_pair({"question": question, "context": context}, "", limits)


def chat_conversation(body: Any, limits) -> tuple[list[dict[str, str]], Decoding]:
    """The conversation (system, user and assistant messages with string content) and decoding options of a
    chat-completions body for a generation run."""
    messages = _messages(body)
    conversation = []
    for index, message in enumerate(messages):
        if (not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant")
                or not isinstance(message.get("content"), str)):
            raise RequestError(422, f"message {index} must be a {{role, content}} object with role system, user or "
                                    "assistant and string content", "messages")
        conversation.append({"role": message["role"], "content": message["content"]})
    if not any(m["role"] == "user" and m["content"].strip() for m in conversation):
        raise RequestError(422, "no user message with content in 'messages'", "messages")
    _check_length("".join(m["content"] for m in conversation), "the conversation", limits)
    return conversation, decoding_of(body, limits, max_tokens_fields=("max_tokens", "max_completion_tokens"))
