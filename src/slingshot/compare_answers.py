"""`slingshot compare` for extractive-QA runs: the fine-tuned reader against the first sentence of each context, an
LLM that reads the same context, and other QA runs, on the same questions.

Each system's answers are scored per question (SQuAD exact match and token F1, the best over the gold answers;
answer-embedding similarity and its acceptable share); `compare.score` adds bootstrap intervals, a paired
bootstrap test on F1 against the fine-tuned model, costs and the verdict, as for classifiers.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from slingshot.baselines import Examples, SystemPredictions, time_local
from slingshot.errors import DataError, RecipeError
from slingshot.llm import ChatRequest, LLMClient, prices_per_1m_usd, token_cost_usd
from slingshot.metrics import exact_match, token_f1
from slingshot.recipe import CompareSection, SimilaritySection
from slingshot.stats import percentiles_ms

QA_BASELINES = ("first_sentence", "llm")
LLM_SYSTEM = ("You answer questions about a text. Reply with the shortest span of the context that answers the "
              "question, copied word for word, and nothing else.")


def qa_examples(loaded, options: CompareSection, data_path: str | None) -> tuple[Examples, str]:
    """Questions (texts), their contexts (pairs) and gold answer lists: the run's split or a SQuAD/JSONL file."""
    from slingshot.data import load_data
    from slingshot.qa_data import read_qa_examples, usable_examples

    if data_path is not None:
        records, source = read_qa_examples(data_path)
        kept, _ = usable_examples(records, source, need_answers=True)
        if not kept:
            raise DataError(f"{source}: no question with a context and an answer", "compare on a labelled QA file")
        rows = [(r["question"], r["context"], list(r["answers"])) for r in kept]
    else:
        data = load_data(loaded.recipe, splits=("train", options.split))
        if options.split not in data.splits:
            raise DataError(f"the run's recipe has no {options.split} split", "use --split eval, or pass --data FILE")
        dataset, source = data.splits[options.split], data.sources[options.split]
        rows = list(zip(dataset["question"], dataset["context"], dataset["answers"]))
    if options.limit is not None and options.limit < len(rows):
        rows = [rows[i] for i in sorted(random.Random(options.seed).sample(range(len(rows)), options.limit))]
    return Examples([q for q, _, _ in rows], [c for _, c, _ in rows], [a for _, _, a in rows]), source


def reader(loaded) -> Callable[[list[str], list[str] | None], list[str]]:
    """A QA run as a predictor of answer texts for (questions, contexts)."""
    from slingshot.evaluate import predict_answers

    return lambda questions, contexts: [r["predicted"] for r in predict_answers(loaded, questions, contexts or [])]


def other_qa_run(run, examples: Examples, options: CompareSection) -> SystemPredictions:
    from slingshot.models import count_parameters

    if run.recipe.task != "extractive_qa":
        raise RecipeError(f"run {run.run.path} is a {run.recipe.task} run; this comparison is of extractive QA",
                          "compare with another extractive_qa run")
    return time_local(f"{Path(run.recipe.model.name).name} ({run.run.path.name})", "run", reader(run), examples,
                      options, count_parameters(run.model)["total"])


def first_sentence(context: str) -> str:
    """The trivial reader: the context's first sentence."""
    return re.split(r"(?<=[.!?])\s", context.strip(), maxsplit=1)[0]


def first_sentence_baseline(examples: Examples) -> SystemPredictions:
    return SystemPredictions("first sentence of the context", "first_sentence",
                             [first_sentence(context) for context in examples.pairs or []],
                             {"p50_ms": 0.0, "p95_ms": 0.0}, None, 0, None, 0.0)


def qa_prompt(question: str, context: str) -> str:
    return f"Context: {context}\n\nQuestion: {question}\nAnswer:"


def clean_answer(text: str) -> str | None:
    """The span an LLM replied with: one line, without quotes or an 'Answer:' prefix; None when empty."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    answer = re.sub(r"^(answer|span)\s*:\s*", "", lines[0], flags=re.IGNORECASE) if lines else ""
    answer = answer.strip().strip('"“”\'`').strip()
    return answer or None


def llm_reader(examples: Examples, options: CompareSection, on_result: Callable | None = None) -> SystemPredictions:
    """Ask the endpoint each question with its context (through the cache); an empty reply is an invalid answer."""
    endpoint = options.llm
    requests = [ChatRequest.of(LLM_SYSTEM, qa_prompt(q, c)) for q, c in zip(examples.texts, examples.pairs or [])]
    client = LLMClient(endpoint)
    try:
        results, usage = client.complete(requests, on_result=on_result)
    finally:
        client.cache.close()
    answers = [clean_answer(result.text) for result in results]
    cost = token_cost_usd(usage.prompt_tokens, usage.completion_tokens, endpoint)
    wall_s = sum(result.latency_s for result in results)
    details = {"base_url": endpoint.base_url, "model": endpoint.model, "prompt_tokens": usage.prompt_tokens,
               "completion_tokens": usage.completion_tokens, "cached_answers": usage.cached,
               "malformed_responses": sum(result.error is not None for result in results),
               "prices_per_1m_usd": prices_per_1m_usd(endpoint), "cost_usd": cost}
    return SystemPredictions(
        f"{endpoint.model} (reads the context)", "llm", answers, percentiles_ms([r.latency_s for r in results]),
        throughput_per_s=len(results) / wall_s * endpoint.concurrency if wall_s > 0 else None,
        cost_per_1k_usd=cost / max(len(results), 1) * 1000 if cost is not None else None, details=details)


def per_question(answers: list[str | None], golds: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Exact match and token F1 of each answer (0-1, the best over its gold answers; no answer scores 0)."""
    em = [max((exact_match(a or "", g) for g in gold), default=0.0) if a else 0.0 for a, gold in zip(answers, golds)]
    f1 = [max((token_f1(a or "", g) for g in gold), default=0.0) if a else 0.0 for a, gold in zip(answers, golds)]
    return np.asarray(em), np.asarray(f1)


def similarities(systems: list[SystemPredictions], golds: list[list[str]],
                 settings: SimilaritySection) -> list[np.ndarray] | None:
    """Per system, the cosine of each answer with its closest gold answer (one embedding pass over every text)."""
    from slingshot.similarity import cosine_scores, embed_texts

    if not settings.enabled:
        return None
    texts = sorted({a for s in systems for a in s.predictions if a and a.strip()} | {g for gold in golds for g in gold})
    vectors = dict(zip(texts, embed_texts(texts, settings.model)))
    return [np.asarray(cosine_scores([a or "" for a in s.predictions], golds, vectors)) for s in systems]


def is_right(answer: str | None, gold: list[str]) -> bool:
    return bool(answer) and any(exact_match(answer, g) for g in gold)
