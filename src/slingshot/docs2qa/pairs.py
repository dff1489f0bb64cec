"""A question-answer pair with its provenance, and what is done to the whole set: duplicates out, split by document."""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import asdict, dataclass

from slingshot.docs2qa.chunk import Chunk

# Words that carry no meaning of their own in a question; without them "What is an image?" and "What is the
# image?" are the same question.
QUESTION_STOPWORDS = {
    "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "is", "are", "was", "were", "be", "do",
    "does", "did", "the", "a", "an", "of", "to", "in", "for", "on", "and", "or", "by", "with", "as", "at", "that",
    "this", "these", "those", "it", "its", "can", "may", "should", "according", "document",
}


@dataclass
class QAPair:
    question: str
    answer: str
    context: str  # the chunk the pair was made from
    document: str
    page: int  # page of the answer's start when it is a span of the context, else the chunk's first page
    chunk_id: str
    answer_start: int | None  # offset of the answer in the context; None when the answer is not a verbatim span
    generator: str  # offline or teacher
    kind: str  # offline: definition, acronym, list, number ...; teacher: teacher

    def to_record(self) -> dict:
        return asdict(self)


def pair_from_span(chunk: Chunk, question: str, answer_start: int, answer_end: int, kind: str) -> QAPair:
    """A pair whose answer is chunk.text[answer_start:answer_end]."""
    return QAPair(question=question, answer=chunk.text[answer_start:answer_end], context=chunk.text,
                  document=chunk.document, page=chunk.page_at(answer_start), chunk_id=chunk.id,
                  answer_start=answer_start, generator="offline", kind=kind)


def question_words(question: str) -> frozenset[str]:
    """Content words of a question, lower-cased, plural 's' dropped: what near-duplicate detection compares."""
    words = re.findall(r"[a-z0-9]+", question.lower())
    return frozenset(word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word
                     for word in words if word not in QUESTION_STOPWORDS)


def drop_duplicate_questions(pairs: list[QAPair], similarity: float) -> tuple[list[QAPair], Counter]:
    """Pairs with exact and near-duplicate questions removed (the first kept), and how many of each went.

    Exact: the same question once case, punctuation and spacing are ignored. Near: the Jaccard similarity of the
    questions' content words reaches `similarity`.
    """
    kept: list[QAPair] = []
    kept_words: list[frozenset[str]] = []
    seen_exact: set[str] = set()
    postings: dict[str, list[int]] = {}  # content word -> indices of kept questions holding it
    dropped: Counter = Counter()
    for pair in pairs:
        exact = " ".join(re.findall(r"\w+", pair.question.lower()))
        if exact in seen_exact:
            dropped["duplicate_question"] += 1
            continue
        words = question_words(pair.question)
        candidates = {index for word in words for index in postings.get(word, ())}
        if any(len(words & kept_words[index]) / len(words | kept_words[index]) >= similarity for index in candidates):
            dropped["near_duplicate_question"] += 1
            continue
        seen_exact.add(exact)
        for word in words:
            postings.setdefault(word, []).append(len(kept))
        kept.append(pair)
        kept_words.append(words)
    return kept, dropped


def split_documents(documents: list[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, eval) documents: a seeded draw of whole documents is held out, at least one when there are two or more.

    Holding out documents, not pairs, keeps evaluation honest: overlapping chunks and repeated facts would
    otherwise put near-copies of a test question in training.
    """
    ordered = sorted(documents)
    if len(ordered) < 2 or eval_fraction == 0:
        return ordered, []
    held_out = min(len(ordered) - 1, max(1, round(eval_fraction * len(ordered))))
    chosen = set(random.Random(seed).sample(ordered, held_out))
    return [name for name in ordered if name not in chosen], [name for name in ordered if name in chosen]
