"""The output folder of `slingshot docs2qa`: pairs as JSONL, SQuAD v1.1 JSON, chat JSONL, chunks, and the report.

```
<out>/
  train.jsonl, eval.jsonl          one pair a line: question, answer, context, document, page, chunk_id, answer_start
  squad/train.json, eval.json      SQuAD v1.1 (extractive pairs only: the answer is a span of the context)
  chat/train.jsonl, eval.jsonl     {"messages": [user question, assistant answer]} for generative fine-tuning
  chunks.jsonl                     every chunk with its document and pages
  recipe.yaml                      the docs2qa settings used
  report.json                      counts; written last: its presence marks the folder finished
```

Everything is written into a hidden sibling folder first and renamed into place at the end, so a crash or a
refused run leaves no half-written output, and a finished output is never replaced without `--overwrite`.
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from slingshot.docs2qa.chunk import Chunk
from slingshot.docs2qa.pairs import QAPair
from slingshot.errors import RunDirError
from slingshot.recipe import Docs2QASection
from slingshot.rundir import write_json, write_jsonl

SPLITS = ("train", "eval")


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, to write where finished work or unrelated files would be lost.

    Raises:
        RunDirError: `out` holds a finished docs2qa output and `overwrite` is off, or holds other files.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise RunDirError(f"{out} exists and is not a folder", "choose another --out")
    if not any(out.iterdir()):
        return
    if (out / "report.json").is_file():
        if not overwrite:
            raise RunDirError(f"{out} already holds a finished docs2qa output",
                              "pass --overwrite to replace it, or choose another --out")
        return
    raise RunDirError(f"{out} is not empty and is not a docs2qa output; nothing there is replaced",
                      "choose a new or empty folder for --out")


def write_output(out: Path, splits: dict[str, list[QAPair]], chunks: list[Chunk], report: dict[str, Any],
                 settings: Docs2QASection, overwrite: bool) -> None:
    """Write every file into a temporary sibling folder, then move it to `out` (see the module docstring)."""
    check_output_folder(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial"
    if partial.exists():
        shutil.rmtree(partial)  # left by a crashed run: ours by its name, and unfinished by definition
    (partial / "squad").mkdir(parents=True)
    (partial / "chat").mkdir()
    for split in SPLITS:
        pairs = splits[split]
        ids = pair_ids(pairs)
        write_jsonl(partial / f"{split}.jsonl", [{"id": pair_id, **pair.to_record()} for pair_id, pair in zip(ids, pairs)])
        write_json(partial / "squad" / f"{split}.json", squad(pairs, ids))
        write_jsonl(partial / "chat" / f"{split}.jsonl", [chat(pair, settings.chat_include_context) for pair in pairs])
    write_jsonl(partial / "chunks.jsonl", [
        {"chunk_id": chunk.id, "document": chunk.document, "page": chunk.page, "last_page": chunk.last_page,
         "tokens": chunk.tokens, "text": chunk.text} for chunk in chunks])
    (partial / "recipe.yaml").write_text(
        yaml.safe_dump({"docs2qa": settings.model_dump(mode="json")}, sort_keys=False, allow_unicode=True),
        encoding="utf-8")
    write_json(partial / "report.json", report)
    if out.exists():
        shutil.rmtree(out)  # check_output_folder allowed it: empty, or finished and --overwrite given
    os.replace(partial, out)


def pair_ids(pairs: list[QAPair]) -> list[str]:
    counts: dict[str, int] = defaultdict(int)
    ids = []
    for pair in pairs:
        ids.append(f"{pair.chunk_id}/{counts[pair.chunk_id]}")
        counts[pair.chunk_id] += 1
    return ids


def squad(pairs: list[QAPair], ids: list[str]) -> dict[str, Any]:
    """SQuAD v1.1: documents (title), their contexts (paragraphs), and the questions on each context."""
    documents: dict[str, dict[str, list[dict[str, Any]]]] = {}
    contexts: dict[str, str] = {}
    for pair_id, pair in zip(ids, pairs):
        if pair.answer_start is None:
            continue  # a paraphrased answer has no span to point at
        contexts[pair.chunk_id] = pair.context
        documents.setdefault(pair.document, {}).setdefault(pair.chunk_id, []).append(
            {"id": pair_id, "question": pair.question,
             "answers": [{"text": pair.answer, "answer_start": pair.answer_start}]})
    return {"version": "1.1", "data": [
        {"title": title, "paragraphs": [{"context": contexts[chunk_id], "qas": qas} for chunk_id, qas in chunks.items()]}
        for title, chunks in documents.items()]}


def chat(pair: QAPair, include_context: bool) -> dict[str, Any]:
    """A chat-format example: closed-book by default (the model learns the documents), or reading comprehension."""
    question = f"{pair.context}\n\nQuestion: {pair.question}" if include_context else pair.question
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": pair.answer}]}
