"""LLM-as-judge: an LLM reads the question, the reference answer and the model's answer, and says whether the
answer is correct. For answers that are right in other words, which exact match and ROUGE-L miss.

Asked through the one OpenAI-compatible client (llm.py), so answers are cached: a rerun costs nothing and gives the
same verdicts. The verdict is parsed from the first word of the reply; anything else counts as unparsed, not wrong.
"""

from __future__ import annotations

import re
from typing import Any

from slingshot.recipe import JudgeSection

SYSTEM = ("You grade answers. Given a question, a reference answer and a candidate answer, reply with one word: "
          "correct if the candidate says what the reference says (other wording is fine), else incorrect.")


def judge_prompt(question: str, references: list[str], prediction: str) -> str:
    reference = references[0] if len(references) == 1 else " | ".join(references)
    return f"Question: {question}\nReference answer: {reference}\nCandidate answer: {prediction or '(no answer)'}"


def parse_verdict(text: str) -> bool | None:
    """True for 'correct', False for 'incorrect' (first word, case and punctuation ignored), else None."""
    words = re.findall(r"[a-z]+", text.lower())
    if not words:
        return None
    return {"correct": True, "incorrect": False}.get(words[0])


def judge_records(records: list[dict], settings: JudgeSection) -> dict[str, Any]:
    """Verdict of the judge on each record with a reference (added to it as `judge`); the summary with usage.

    A record's question is its `prompt` (generation) or `question` (extractive QA). Raises LLMError when the
    endpoint cannot be used.
    """
    from slingshot.llm import ChatRequest, LLMClient

    graded = [r for r in records if r.get("gold")]
    requests = [ChatRequest.of(SYSTEM, judge_prompt(r.get("prompt") or r.get("question") or "", r["gold"],
                                                    r["predicted"]), temperature=0.0) for r in graded]
    client = LLMClient(settings.llm)
    try:
        results, usage = client.complete(requests)
    finally:
        client.cache.close()
    verdicts = [parse_verdict(result.text) for result in results]
    for record, verdict in zip(graded, verdicts):
        record["judge"] = {True: "correct", False: "incorrect", None: "unparsed"}[verdict]
    parsed = [v for v in verdicts if v is not None]
    return {
        "model": settings.llm.model,
        "answers": len(graded),
        "correct": sum(parsed),
        "incorrect": len(parsed) - sum(parsed),
        "unparsed": len(verdicts) - len(parsed),
        "accuracy": sum(parsed) / len(parsed) if parsed else 0.0,  # of the parsed verdicts
        "cached": usage.cached,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cost_usd": usage.cost_usd(settings.llm),
    }
