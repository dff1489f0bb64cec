"""Clean text to chunks of at most N tokens of the chosen tokenizer, cut between sentences, preferably between
paragraphs, each repeating the last sentences of the one before (overlap) and knowing its document and pages.

A chunk is always a contiguous span of its document's clean text, so an answer's offset in the chunk is also an
offset in the document, and the page of any character is known.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass

from slingshot.docs2qa.clean import CleanText
from slingshot.recipe import ChunkSection

# Words after which a period does not end a sentence (lower-cased, without the period).
ABBREVIATIONS = {
    "e.g", "i.e", "etc", "vs", "cf", "al", "fig", "figs", "no", "nos", "vol", "sec", "sect", "ch", "p", "pp", "para",
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "inc", "ltd", "corp", "co", "approx", "rev", "pub", "ed",
    "eds", "dept", "u.s", "u.k", "e.u", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov",
    "dec", "est", "min", "max", "ref", "refs", "eq", "art",
}
# A sentence ends at . ! or ? (perhaps followed by a closing quote or bracket), then space, then what can start one.
# A footnote marker may sit between the period and the space ("within one hour.73 To meet").
SENTENCE_BREAK = re.compile(r"[.!?][\"')\]]*(?:(?<=[a-z].)\d{1,3})?\s+(?=[\"'(\[]?[A-Z0-9•])")


@dataclass
class Chunk:
    id: str  # "<document>#<index>", unique in a run
    document: str
    text: str
    start: int  # offset of the chunk in its document's clean text
    fresh_start: int  # offset in `text` where the part not repeated from the previous chunk begins
    tokens: int
    page_offsets: list[int]  # offsets in `text` where a page begins (the first is 0) ...
    page_numbers: list[int]  # ... and that page's number

    @property
    def page(self) -> int:
        return self.page_numbers[0]

    @property
    def last_page(self) -> int:
        return self.page_numbers[-1]

    def page_at(self, offset: int) -> int:
        """The page a character of the chunk (an answer's start, say) came from."""
        return self.page_numbers[max(bisect.bisect_right(self.page_offsets, offset) - 1, 0)]


@dataclass
class _Unit:
    start: int
    end: int
    tokens: int
    opens_paragraph: bool


def load_chunk_tokenizer(name: str):
    """The tokenizer that measures chunks, found offline first like every model. Raises ModelError."""
    from slingshot.models import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model(name).path)


def sentence_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """(start, end) of each sentence of text[start:end], trimmed of surrounding whitespace."""
    end = len(text) if end is None else end
    spans, begin = [], start
    for match in SENTENCE_BREAK.finditer(text, start, end):
        stop = match.start() + 1
        word = re.search(r"(\S+)$", text[begin:stop - 1])
        last = word.group(1).lower().lstrip("(\"'[") if word else ""
        # "e.g. The", "U.S. Code", "J. Smith", "Section 3. Then": not ends, except a number at the end of a sentence
        if last in ABBREVIATIONS or re.fullmatch(r"[a-z]", last) or (len(last) == 1 and last.isalpha()):
            continue
        spans.append((begin, match.end()))
        begin = match.end()
    if begin < end:
        spans.append((begin, end))
    result = []
    for a, b in spans:
        segment = text[a:b]
        a += len(segment) - len(segment.lstrip())
        b -= len(segment) - len(segment.rstrip())
        if b > a:
            result.append((a, b))
    return result


def chunk_document(clean: CleanText, tokenizer, settings: ChunkSection) -> list[Chunk]:
    """Chunks of one document in reading order; ids are '<document>#<index>'."""
    units = _units(clean.text, tokenizer, settings.max_tokens)
    chunks: list[Chunk] = []
    first = fresh = 0  # first unit of the chunk (overlap included), first unit not in the previous chunk
    while fresh < len(units):
        if sum(unit.tokens for unit in units[first:fresh]) + units[fresh].tokens > settings.max_tokens:
            first = fresh  # the overlap and the next sentence do not fit together: the sentence wins
        total = sum(unit.tokens for unit in units[first:fresh])
        stop = fresh
        while stop < len(units) and (stop == fresh or total + units[stop].tokens <= settings.max_tokens):
            total += units[stop].tokens
            stop += 1
        if stop < len(units) and not units[stop].opens_paragraph:
            # End at the last paragraph start inside the chunk if that still leaves it at least half full.
            for candidate in range(stop - 1, fresh, -1):
                if units[candidate].opens_paragraph:
                    if sum(unit.tokens for unit in units[first:candidate]) >= settings.max_tokens / 2:
                        stop = candidate
                    break
        chunks.append(_make_chunk(clean, units[first:stop], units[fresh].start, len(chunks)))
        next_first, carried = stop, 0
        while next_first - 1 >= fresh and carried + units[next_first - 1].tokens <= settings.overlap_tokens:
            next_first -= 1
            carried += units[next_first].tokens
        first, fresh = next_first, stop
    return chunks


def _make_chunk(clean: CleanText, units: list[_Unit], fresh_offset: int, index: int) -> Chunk:
    start, end = units[0].start, units[-1].end
    offsets, numbers = [0], [clean.page_at(start)]
    for position in range(bisect.bisect_right(clean.page_starts, start), len(clean.page_starts)):
        if clean.page_starts[position] >= end:
            break
        offsets.append(clean.page_starts[position] - start)
        numbers.append(clean.page_numbers[position])
    return Chunk(id=f"{clean.name}#{index}", document=clean.name, text=clean.text[start:end], start=start,
                 fresh_start=fresh_offset - start, tokens=sum(unit.tokens for unit in units),
                 page_offsets=offsets, page_numbers=numbers)


def _units(text: str, tokenizer, max_tokens: int) -> list[_Unit]:
    """Sentences with their token counts; a sentence longer than a chunk is cut between tokens."""
    spans: list[tuple[int, int, bool]] = []
    for paragraph in re.finditer(r"[^\n]+(?:\n(?!\n)[^\n]*)*", text):
        sentences = sentence_spans(text, paragraph.start(), paragraph.end())
        spans += [(a, b, index == 0) for index, (a, b) in enumerate(sentences)]
    if not spans:
        return []
    encoded = tokenizer([text[a:b] for a, b, _ in spans], add_special_tokens=False,
                        return_offsets_mapping=tokenizer.is_fast)
    units = []
    for (a, b, opens), ids, offsets in zip(spans, encoded["input_ids"], encoded.get("offset_mapping") or
                                           [None] * len(spans)):
        if len(ids) <= max_tokens:
            units.append(_Unit(a, b, len(ids), opens))
            continue
        for index, (piece_start, piece_end, count) in enumerate(_split_long(text[a:b], len(ids), offsets, max_tokens)):
            units.append(_Unit(a + piece_start, a + piece_end, count, opens and index == 0))
    return units


def _split_long(sentence: str, token_count: int, offsets, max_tokens: int) -> list[tuple[int, int, int]]:
    """(start, end, tokens) pieces of a too-long sentence, cut at a space where possible."""
    if offsets is None:  # a slow tokenizer gives no offsets: cut into equal runs of words
        words = [match.span() for match in re.finditer(r"\S+", sentence)]
        parts = math.ceil(token_count / max_tokens)
        size = math.ceil(len(words) / parts)
        return [(words[i][0], words[min(i + size, len(words)) - 1][1], math.ceil(token_count / parts))
                for i in range(0, len(words), size)]
    pieces, first = [], 0
    while first < token_count:
        last = min(first + max_tokens, token_count)
        if last < token_count:
            # back off to a token that starts a word, so no word is cut in two
            cut = last
            while cut > first + 1 and offsets[cut][0] == offsets[cut - 1][1]:
                cut -= 1
            last = cut if cut > first + 1 else last
        start, end = offsets[first][0], offsets[last - 1][1]
        pieces.append((start, end, last - first))
        first = last
    return pieces
