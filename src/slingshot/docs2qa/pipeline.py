"""`slingshot docs2qa` from end to end, in the order it runs: read, clean, chunk, generate, deduplicate, split,
write. Counts every page, chunk and pair on the way into the report.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slingshot.docs2qa.chunk import Chunk, chunk_document, load_chunk_tokenizer
from slingshot.docs2qa.clean import clean_document
from slingshot.docs2qa.export import check_output_folder, write_output
from slingshot.docs2qa.ingest import Document, Skipped, find_files, read_document
from slingshot.docs2qa.offline import generate_offline
from slingshot.docs2qa.pairs import drop_duplicate_questions, split_documents
from slingshot.docs2qa.teacher import generate_teacher
from slingshot.errors import DataError
from slingshot.recipe import Docs2QASection


def run_docs2qa(inputs: list[str], out: Path | None, settings: Docs2QASection, *, overwrite: bool = False,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Make the question-answer set of `inputs` in `out` and return the report (also written as report.json).

    `out=None` writes nothing (the benchmark's use). Raises DataError when no file is usable or no pair survives,
    RunDirError when `out` would overwrite finished work, ModelError for the tokenizer, LLMError for the teacher.
    """
    say = progress or (lambda message: None)
    start = time.perf_counter()
    if out is not None:
        check_output_folder(out, overwrite)  # before any work: a refusal should not cost a teacher bill

    files, skipped = find_files(inputs, settings.ingest)
    documents: list[Document] = []
    for path, name in files:
        result = read_document(path, name, settings.ingest)
        (skipped if isinstance(result, Skipped) else documents).append(result)
    say(f"read {len(documents)} documents, skipped {len(skipped)}")
    if not documents:
        listed = "; ".join(f"{item.name}: {item.reason}" for item in skipped[:5]) or "no files found"
        raise DataError(f"nothing usable in {', '.join(inputs)} ({listed}{' ...' if len(skipped) > 5 else ''})",
                        "give PDFs with a text layer, or .txt, .md or .html files")

    tokenizer = load_chunk_tokenizer(settings.chunk.tokenizer)
    cleaning: Counter = Counter()
    chunks_by_document: dict[str, list[Chunk]] = {}
    for document in documents:
        clean = clean_document(document, settings.clean)
        cleaning.update(clean.removed)
        chunks_by_document[document.name] = chunk_document(clean, tokenizer, settings.chunk)
    chunks = [chunk for document_chunks in chunks_by_document.values() for chunk in document_chunks]
    say(f"cut {len(chunks)} chunks of at most {settings.chunk.max_tokens} tokens")

    rejects: Counter = Counter()
    teacher_usage = None
    if settings.generator == "teacher":
        generated, rejects, teacher_usage = generate_teacher(chunks, settings.pairs_per_chunk, settings.teacher)
    else:
        generated = [pair for chunk in chunks for pair in generate_offline(chunk, settings.pairs_per_chunk)]
    kept, duplicates = drop_duplicate_questions(generated, settings.near_duplicate_similarity)
    rejects.update(duplicates)
    say(f"generated {len(generated)} pairs, kept {len(kept)}")
    if not kept:
        reasons = ", ".join(f"{reason} {count}" for reason, count in rejects.items()) or "none generated"
        raise DataError(f"no question-answer pairs survived from {len(documents)} documents ({reasons})",
                        "try --generator teacher, larger chunks (--set docs2qa.chunk.max_tokens=...), or other documents")

    train_documents, eval_documents = split_documents([d.name for d in documents], settings.eval_fraction, settings.seed)
    splits = {"train": [p for p in kept if p.document in set(train_documents)],
              "eval": [p for p in kept if p.document in set(eval_documents)]}
    report = _report(inputs, settings, documents, skipped, chunks_by_document, generated, kept, rejects, cleaning,
                     splits, eval_documents, teacher_usage)
    report["wall_time_s"] = round(time.perf_counter() - start, 2)
    if out is not None:
        write_output(out, splits, chunks, report, settings, overwrite)
    return report


def _report(inputs, settings, documents, skipped, chunks_by_document, generated, kept, rejects, cleaning, splits,
            eval_documents, teacher_usage) -> dict[str, Any]:
    kept_per_document = Counter(pair.document for pair in kept)
    kinds = Counter(pair.kind for pair in kept)
    return {
        "inputs": inputs,
        "generator": settings.generator,
        "documents": {"read": len(documents), "skipped": len(skipped)},
        "skipped_files": [{"file": item.name, "reason": item.reason} for item in skipped],
        "pages": {"with_text": sum(len(d.pages) for d in documents),
                  "without_text": sum(len(d.empty_pages) for d in documents)},
        "chunks": sum(len(chunks) for chunks in chunks_by_document.values()),
        "pairs": {"generated": len(generated), "kept": len(kept), "train": len(splits["train"]),
                  "eval": len(splits["eval"]), "rejected": dict(rejects), "kept_by_kind": dict(kinds)},
        "split": {"train_documents": sorted({d.name for d in documents} - set(eval_documents)),
                  "eval_documents": eval_documents},
        "cleaning": dict(cleaning),
        "per_document": {
            d.name: {"kind": d.kind, "pages": len(d.pages) + len(d.empty_pages), "pages_without_text": d.empty_pages,
                     "chunks": len(chunks_by_document[d.name]), "pairs_kept": kept_per_document[d.name],
                     "split": "eval" if d.name in eval_documents else "train"}
            for d in documents},
        "teacher": teacher_usage,
    }
