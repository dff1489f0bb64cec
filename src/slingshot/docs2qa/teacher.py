"""The teacher generator: an LLM behind any OpenAI-compatible endpoint writes N grounded pairs per chunk as JSON.

Requests go through `slingshot.llm.LLMClient` (concurrency limit, retries, on-disk cache: a rerun costs nothing).
An answer that is not the asked-for JSON is asked again in the same conversation, `json_retries` times, then the
chunk is skipped and counted. Each pair must name a question and an answer, and the answer must be supported by
the chunk: most of its content words occur there. What fails is counted by reason, never silently dropped.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict
from typing import Any

from slingshot.docs2qa.chunk import Chunk
from slingshot.docs2qa.pairs import QAPair
from slingshot.llm import ChatRequest, LLMClient, Usage
from slingshot.recipe import TeacherSection

SYSTEM_PROMPT = (
    "You write question-answer pairs that teach a model the content of a document. Every question must make "
    "sense on its own, without the passage in front of the reader: name the subject, never write 'the passage', "
    "'the text' or 'this section'. Every answer must be short and supported by the passage, copied from it where "
    "possible. Reply with JSON only."
)
USER_PROMPT = (
    "Write {count} question-answer pairs about the passage below, from document '{document}', page {page}.\n"
    'Reply with exactly this JSON shape: {{"pairs": [{{"question": "...", "answer": "..."}}]}}\n\n'
    "Passage:\n{passage}"
)
RETRY_PROMPT = (
    'That was not the JSON asked for ({problem}). Reply with only a JSON object of the shape '
    '{{"pairs": [{{"question": "...", "answer": "..."}}]}} and nothing else.'
)
STOPWORDS = {
    "the", "a", "an", "of", "to", "in", "for", "on", "and", "or", "by", "with", "as", "at", "is", "are", "was",
    "were", "be", "been", "it", "its", "that", "this", "these", "those", "from", "which", "can", "may", "should",
    "must", "will", "not", "no", "their", "they", "them", "such", "also", "than", "then", "into", "about",
}


def teacher_request(chunk: Chunk, count: int, settings: TeacherSection) -> ChatRequest:
    user = USER_PROMPT.format(count=count, document=chunk.document, page=chunk.page, passage=chunk.text)
    return ChatRequest.of(SYSTEM_PROMPT, user, response_format={"type": "json_object"} if settings.json_mode else None)


def generate_teacher(chunks: list[Chunk], count: int, settings: TeacherSection,
                     client: LLMClient | None = None) -> tuple[list[QAPair], Counter, dict[str, Any]]:
    """Pairs for every chunk, rejects by reason, and the usage of the endpoint (requests, cached, tokens, cost).

    Raises:
        LLMError: the endpoint is unusable or requests kept failing (answers received so far are cached).
    """
    client = client or LLMClient(settings.llm)
    usage = Usage()
    requests = [teacher_request(chunk, count, settings) for chunk in chunks]
    parsed: list[list[Any] | None] = [None] * len(chunks)
    pending = list(range(len(chunks)))
    problems: dict[int, str] = {}
    for attempt in range(settings.json_retries + 1):
        if not pending:
            break
        results, batch_usage = client.complete([requests[index] for index in pending])
        _add_usage(usage, batch_usage)
        still_bad = []
        for index, result in zip(pending, results):
            pairs, problem = parse_pairs(result.text)
            if pairs is not None:
                parsed[index] = pairs
                continue
            still_bad.append(index)
            problems[index] = problem
            # Ask again in the same conversation: a model corrects its format far more often than it repeats it.
            messages = requests[index].messages + (("assistant", result.text),
                                                   ("user", RETRY_PROMPT.format(problem=problem)))
            requests[index] = ChatRequest(messages=messages, response_format=requests[index].response_format,
                                          sample=attempt + 1)
        pending = still_bad

    rejects: Counter = Counter({"invalid_json": len(pending)} if pending else {})
    pairs: list[QAPair] = []
    for chunk, items in zip(chunks, parsed):
        if items is None:
            continue
        for item in items[:count]:
            pair, reason = _checked_pair(chunk, item, settings.min_answer_overlap)
            if pair is None:
                rejects[reason] += 1
            else:
                pairs.append(pair)
        if len(items) > count:
            rejects["beyond_pairs_per_chunk"] += len(items) - count
    report = asdict(usage)
    report.pop("failures")
    report["wall_s"] = round(report["wall_s"], 2)
    report["cost_usd"] = usage.cost_usd(settings.llm)
    return pairs, rejects, report


def _add_usage(total: Usage, batch: Usage) -> None:
    for name in ("requests", "cached", "prompt_tokens", "completion_tokens", "failed", "wall_s"):
        setattr(total, name, getattr(total, name) + getattr(batch, name))


def parse_pairs(text: str) -> tuple[list[Any] | None, str]:
    """The list of pairs in a reply, or None and what is wrong with it. Code fences and chatter around it are tolerated."""
    body = re.sub(r"^\s*```(?:json)?\s*|\s*```\s*$", "", text.strip())
    data: Any = None
    for candidate in (body, _outermost(body, "{", "}"), _outermost(body, "[", "]")):
        if candidate:
            try:
                data = json.loads(candidate)
                break
            except json.JSONDecodeError:
                continue
    if data is None:
        return None, "no JSON found" if not text.strip() else "invalid JSON"
    if isinstance(data, dict):
        lists = [value for value in data.values() if isinstance(value, list)]
        data = data.get("pairs", lists[0] if lists else None)
    if not isinstance(data, list):
        return None, 'no "pairs" list'
    return data, ""


def _outermost(text: str, opening: str, closing: str) -> str | None:
    start, end = text.find(opening), text.rfind(closing)
    return text[start:end + 1] if 0 <= start < end else None


def _checked_pair(chunk: Chunk, item: Any, min_overlap: float) -> tuple[QAPair | None, str]:
    if not isinstance(item, dict):
        return None, "malformed_pair"
    question, answer = item.get("question"), item.get("answer")
    if not isinstance(question, str) or not isinstance(answer, str) or not question.strip() or not answer.strip():
        return None, "malformed_pair"
    question, answer = " ".join(question.split()), " ".join(answer.split())
    if not is_grounded(answer, chunk.text, min_overlap):
        return None, "ungrounded_answer"
    start = chunk.text.find(answer)
    if start < 0:
        # a span that differs only in case still counts as extractive (SQuAD export), at its true text
        lowered = chunk.text.lower().find(answer.lower())
        if lowered >= 0:
            start, answer = lowered, chunk.text[lowered:lowered + len(answer)]
    return QAPair(question=question, answer=answer, context=chunk.text, document=chunk.document,
                  page=chunk.page_at(start) if start >= 0 else chunk.page, chunk_id=chunk.id,
                  answer_start=start if start >= 0 else None, generator="teacher", kind="teacher"), ""


def content_words(text: str) -> list[str]:
    return [word for word in re.findall(r"\w+", text.lower()) if word not in STOPWORDS]


def is_grounded(answer: str, context: str, min_overlap: float) -> bool:
    """Whether the context supports the answer: at least `min_overlap` of its content words occur in the context.

    An answer of stopwords only ("it is") is grounded only if it occurs verbatim.
    """
    words = content_words(answer)
    if not words:
        return answer.lower() in context.lower()
    vocabulary = set(re.findall(r"\w+", context.lower()))
    return sum(word in vocabulary for word in words) / len(words) >= min_overlap
