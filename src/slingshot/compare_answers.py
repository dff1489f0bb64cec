"""`slingshot compare` for runs that answer in text: extractive QA (the reader against the first sentence of each
context, an LLM that reads the same context, other QA runs) and generation / seq2seq (against an LLM asked the same
conversation, and other runs of the task), on the same examples.

Each system's answers are scored per example (SQuAD exact match and token F1, the best over the gold answers;
ROUGE-L for generated answers; answer-embedding similarity and its acceptable share); `compare.score` adds
bootstrap intervals, a paired bootstrap test on F1 against the fine-tuned model, costs and the verdict, as for
classifiers.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from slingshot.baselines import Examples, SystemPredictions, endpoint_system, time_local
from slingshot.errors import DataError, RecipeError
from slingshot.llm import ChatRequest, LLMClient
from slingshot.metrics import best_scores, exact_match, token_f1
from slingshot.recipe import CompareSection, SimilaritySection

QA_BASELINES = ("first_sentence", "llm")
CHAT_BASELINES = ("llm",)
TEXT_TASKS = ("extractive_qa", "generation", "seq2seq")
LLM_SYSTEM = ("You answer questions about a text. Reply with the shortest span of the context that answers the "
              "question, copied word for word, and nothing else.")


def answer_examples(loaded, options: CompareSection, data_path: str | None) -> tuple[Examples, str]:
    """The examples every system answers: the run's split or a file in the run's format, seeded sample.

    Extractive QA: texts are questions, pairs their contexts. Generation: texts are the conversations up to the
    reference answer (JSON), pairs None. Gold: a list of reference answers per example."""
    from slingshot.chat_data import prompt_messages, reference_answer
    from slingshot.data import load_data, load_file

    if data_path is not None:
        dataset, _ = load_file(data_path, loaded.recipe, None, need_label=True)
        source = data_path
    else:
        data = load_data(loaded.recipe, splits=("train", options.split))
        if options.split not in data.splits:
            raise DataError(f"the run's recipe has no {options.split} split", "use --split eval, or pass --data FILE")
        dataset, source = data.splits[options.split], data.sources[options.split]
    rows = list(range(len(dataset)))
    if options.limit is not None and options.limit < len(rows):
        rows = sorted(random.Random(options.seed).sample(rows, options.limit))
    dataset = dataset.select(rows)
    if loaded.recipe.task == "extractive_qa":
        return Examples(list(dataset["question"]), list(dataset["context"]), [list(a) for a in dataset["answers"]]), source
    conversations = list(dataset["messages"])
    return Examples([json.dumps(prompt_messages(m), ensure_ascii=False) for m in conversations], None,
                    [[reference_answer(m) or ""] for m in conversations]), source


def reader(loaded) -> Callable[[list[str], list[str] | None], list[str]]:
    """A run as a predictor of answer texts: (questions, contexts) for QA, (conversations as JSON, None) else."""
    from datasets import Dataset

    from slingshot.evaluate import predict_answers, predict_dataset

    if loaded.recipe.task == "extractive_qa":
        return lambda questions, contexts: [r["predicted"] for r in predict_answers(loaded, questions, contexts or [])]

    def generate(conversations: list[str], _: list[str] | None) -> list[str]:
        dataset = Dataset.from_list([{"messages": json.loads(c), "row": i} for i, c in enumerate(conversations, 1)])
        return [r["predicted"] for r in predict_dataset(loaded, dataset)]

    return generate


def other_text_run(run, task: str, examples: Examples, options: CompareSection) -> SystemPredictions:
    from slingshot.models import count_parameters

    same = run.recipe.task == task or {run.recipe.task, task} == {"generation", "seq2seq"}
    if not same:
        raise RecipeError(f"run {run.run.path} is a {run.recipe.task} run; this comparison is of {task}",
                          f"compare with another {task} run")
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
    """Ask the endpoint every example (through the cache): a QA question with its context, or a conversation as the
    fine-tuned model saw it. An empty reply is an invalid answer."""
    endpoint = options.llm
    if examples.pairs is not None:
        requests = [ChatRequest.of(LLM_SYSTEM, qa_prompt(q, c)) for q, c in zip(examples.texts, examples.pairs)]
        name = f"{endpoint.model} (reads the context)"
    else:
        requests = [ChatRequest(messages=tuple((m["role"], m["content"]) for m in json.loads(text)))
                    for text in examples.texts]
        name = f"{endpoint.model} (same conversation)"
    client = LLMClient(endpoint)
    try:
        results, usage = client.complete(requests, on_result=on_result)
    finally:
        client.cache.close()
    answers = [clean_answer(r.text) if examples.pairs is not None else (r.text.strip() or None) for r in results]
    return endpoint_system(name, answers, results, usage, endpoint)


def per_question(answers: list[str | None], golds: list[list[str]],
                 scorer: Callable[[str, str], float] = token_f1) -> tuple[np.ndarray, np.ndarray]:
    """Exact match and `scorer` (token F1, or ROUGE-L) of each answer: 0-1, the best over its gold answers; no
    answer scores 0."""
    given = np.asarray([bool(a) for a in answers], dtype=float)
    texts = [a or "" for a in answers]
    return (np.asarray(best_scores(texts, golds, exact_match)) * given,
            np.asarray(best_scores(texts, golds, scorer)) * given)


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
