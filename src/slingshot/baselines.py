"""The systems a fine-tuned classifier is compared with: majority class, zero-shot embeddings, an LLM, other runs.

Each baseline returns a `SystemPredictions` over exactly the same examples, in the same order. A prediction of
None is an answer that matched no label: it counts as wrong, and the count is reported separately.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slingshot.llm import ChatRequest, LLMClient, prices_per_1m_usd, token_cost_usd
from slingshot.recipe import CompareSection
from slingshot.rundir import peak_rss_bytes, reset_peak_rss
from slingshot.stats import percentiles_ms


@dataclass
class SystemPredictions:
    """One system's answers on the comparison examples, and what producing them cost."""

    name: str
    kind: str  # fine-tuned, majority, embedding, llm, run
    predictions: list[Any]  # label names (None: invalid answer) or numbers
    latency: dict[str, float | None] = field(default_factory=lambda: {"p50_ms": None, "p95_ms": None})
    throughput_per_s: float | None = None
    parameters: int | None = None
    peak_rss_mb: float | None = None
    cost_per_1k_usd: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def invalid(self) -> int:
        return sum(prediction is None for prediction in self.predictions)


@dataclass(frozen=True)
class Examples:
    """The comparison examples: texts (and second texts for pair tasks) with gold labels."""

    texts: list[str]
    pairs: list[str] | None
    gold: list[Any]


def time_local(
    name: str, kind: str, predict: Callable[[list[str], list[str] | None], list[Any]], examples: Examples,
    options: CompareSection, parameters: int | None = None,
) -> SystemPredictions:
    """Run a local predictor over all examples (batched, for throughput and peak memory), then time
    `options.latency_examples` of them one at a time for p50/p95 latency as a single request would see it."""
    reset_peak_rss()
    start = time.perf_counter()
    predictions = predict(examples.texts, examples.pairs)
    elapsed_s = time.perf_counter() - start
    peak_mb = peak_rss_bytes() / 2**20
    order = random.Random(options.seed).sample(range(len(examples.texts)), min(options.latency_examples,
                                                                               len(examples.texts)))
    latencies = []
    for index in order:
        single_start = time.perf_counter()
        predict([examples.texts[index]], [examples.pairs[index]] if examples.pairs else None)
        latencies.append(time.perf_counter() - single_start)
    throughput = len(examples.texts) / elapsed_s if elapsed_s > 0 else None
    cost = (1000 / throughput) * options.hardware_price_per_hour_usd / 3600 if throughput else None
    return SystemPredictions(name, kind, predictions, percentiles_ms(latencies), throughput, parameters,
                             peak_mb, cost, {"batch_wall_s": elapsed_s})


def majority(train_labels: list[Any], count: int, regression: bool = False) -> SystemPredictions:
    """The most frequent training label (the mean, for regression) for every example; free and instant."""
    if regression:
        value: Any = float(np.mean(train_labels))
        name = "mean of training labels"
    else:
        value = Counter(train_labels).most_common(1)[0][0]
        name = f"majority class ({value})"
    return SystemPredictions(name, "majority", [value] * count, {"p50_ms": 0.0, "p95_ms": 0.0}, None, 0, None, 0.0)


def embedding_predictor(model_name: str, label_names: list[str], descriptions: dict[str, str]):
    """A zero-shot predictor: the label whose name (and description) embedding is most similar to the text's."""
    from sentence_transformers import SentenceTransformer

    from slingshot.models import resolve_model

    model = SentenceTransformer(str(resolve_model(model_name).path), device="cpu")
    label_texts = [f"{name}: {descriptions[name]}" if name in descriptions else name for name in label_names]
    label_vectors = model.encode(label_texts, normalize_embeddings=True, convert_to_numpy=True)  # (labels, dim)

    def predict(texts: list[str], pairs: list[str] | None) -> list[str]:
        joined = texts if pairs is None else [f"{a} {b}" for a, b in zip(texts, pairs)]
        vectors = model.encode(joined, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)  # (n, dim)
        return [label_names[i] for i in np.argmax(vectors @ label_vectors.T, axis=1)]

    parameters = sum(p.numel() for p in model.parameters())
    return predict, parameters


# ---- the LLM baseline -------------------------------------------------------------------------------------


def pick_shots(train_texts: list[str], train_labels: list[str], label_names: list[str], k: int, seed: int):
    """k training examples, labels taken in turn so every label shows up, the same for every prompt."""
    by_label: dict[str, list[str]] = {name: [] for name in label_names}
    for text, label in zip(train_texts, train_labels):
        if label in by_label:
            by_label[label].append(text)
    rng = random.Random(seed)
    for texts in by_label.values():
        rng.shuffle(texts)
    shots: list[tuple[str, str]] = []
    depth = 0
    while len(shots) < k and any(depth < len(texts) for texts in by_label.values()):
        for name in label_names:
            if len(shots) < k and depth < len(by_label[name]):
                shots.append((by_label[name][depth], name))
        depth += 1
    return shots


def build_prompt(text: str, pair: str | None, label_names: list[str], descriptions: dict[str, str],
                 shots: list[tuple[str, str]], answer_format: str) -> tuple[str, str]:
    """(system, user) messages asking for one label. Shots are shown before the text to classify."""
    if answer_format == "text":
        system = "You are a text classifier. Reply with exactly one of the labels listed, and nothing else."
    else:
        system = 'You are a text classifier. Reply with a JSON object {"label": "<one of the labels listed>"}.'
    lines = ["Classify the text into exactly one of these labels:"]
    lines += [f"- {name}: {descriptions[name]}" if name in descriptions else f"- {name}" for name in label_names]
    if shots:
        lines += ["", "Examples:"]
        for shot_text, shot_label in shots:
            lines += [f"Text: {shot_text}", f"Label: {shot_label}", ""]
    lines += ["", f"Text: {text}"] if not shots else [f"Text: {text}"]
    if pair is not None:
        lines.append(f"Second text: {pair}")
    lines.append("Label:")
    return system, "\n".join(lines)


def response_format(answer_format: str, label_names: list[str]) -> dict[str, Any] | None:
    if answer_format == "json_object":
        return {"type": "json_object"}
    if answer_format == "json_schema":
        schema = {"type": "object", "properties": {"label": {"type": "string", "enum": label_names}},
                  "required": ["label"], "additionalProperties": False}
        return {"type": "json_schema", "json_schema": {"name": "label", "strict": True, "schema": schema}}
    return None


def parse_label(answer: str, label_names: list[str]) -> str | None:
    """The label an answer gives, or None: JSON {"label": ...}, then the whole answer (any case, quotes and
    punctuation ignored), then the label mentioned first (as a whole word). Never a guess."""
    text = answer.strip()
    if not text:
        return None
    value = _json_label(text)
    if value is not None:
        text = value
    lowered = {name.lower(): name for name in label_names}
    bare = re.sub(r"^(label|answer)\s*:\s*", "", text.strip().strip("\"'`*.:;!").strip(), flags=re.IGNORECASE)
    if bare.lower() in lowered:
        return lowered[bare.lower()]
    first: tuple[int, int, str] | None = None
    for name in label_names:
        found = re.search(rf"(?<!\w){re.escape(name.lower())}(?!\w)", text.lower())
        if found and (first is None or (found.start(), -len(name)) < first[:2]):
            first = (found.start(), -len(name), name)
    return first[2] if first else None


def _json_label(text: str) -> str | None:
    fenced = re.search(r"\{.*\}", text, flags=re.DOTALL)
    if not fenced:
        return None
    try:
        parsed = json.loads(fenced.group(0))
    except json.JSONDecodeError:
        return None
    if isinstance(parsed, dict):
        value = parsed.get("label", next(iter(parsed.values()), None) if len(parsed) == 1 else None)
        return value if isinstance(value, str) else None
    return None


def llm_baseline(examples: Examples, label_names: list[str], shots: list[tuple[str, str]],
                 options: CompareSection, on_result: Callable | None = None) -> SystemPredictions:
    """Ask the endpoint for every example (through the cache), parse each answer into a label or None."""
    endpoint = options.llm
    fmt = response_format(options.answer_format, label_names)
    requests = []
    for index, text in enumerate(examples.texts):
        pair = examples.pairs[index] if examples.pairs else None
        system, user = build_prompt(text, pair, label_names, options.label_descriptions, shots, options.answer_format)
        requests.append(ChatRequest.of(system, user, response_format=fmt))
    client = LLMClient(endpoint)
    try:
        results, usage = client.complete(requests, on_result=on_result)
    finally:
        client.cache.close()
    predictions = [parse_label(result.text, label_names) for result in results]
    name = f"{endpoint.model} ({len(shots)}-shot)" if shots else f"{endpoint.model} (zero-shot)"
    return endpoint_system(name, predictions, results, usage, endpoint, shots=len(shots),
                           answer_format=options.answer_format,
                           invalid_examples=[{"index": i, "answer": results[i].text[:200]}
                                             for i, p in enumerate(predictions) if p is None][:20])


def endpoint_system(name: str, predictions: list[Any], results: list, usage, endpoint,
                    **details: Any) -> SystemPredictions:
    """An LLM endpoint's answers as a system: token usage and cost, latency, throughput, and `details`."""
    cost = token_cost_usd(usage.prompt_tokens, usage.completion_tokens, endpoint)
    wall_s = sum(result.latency_s for result in results)
    details = {
        "base_url": endpoint.base_url, "model": endpoint.model, **details,
        "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
        "cached_answers": usage.cached, "malformed_responses": sum(result.error is not None for result in results),
        "prices_per_1m_usd": prices_per_1m_usd(endpoint), "cost_usd": cost,
    }
    return SystemPredictions(
        name, "llm", predictions, percentiles_ms([result.latency_s for result in results]),
        # as observed from here, with `concurrency` requests in flight; cached answers keep their first latency
        throughput_per_s=len(results) / wall_s * endpoint.concurrency if wall_s > 0 else None,
        cost_per_1k_usd=cost / max(len(results), 1) * 1000 if cost is not None else None, details=details,
    )
