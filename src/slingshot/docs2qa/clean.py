"""Pages to one clean text per document: paragraphs separated by a blank line, and where each page starts in it.

Text extracted from a PDF is a list of printed lines: running headers and footers on every page, page numbers,
table-of-contents leaders, words hyphenated at line ends, paragraphs cut into lines. Each step below undoes one
of these and can be switched off in the recipe (`docs2qa.clean`). The steps work on lines, in this order:
normalise, drop headers/footers and page numbers, drop TOC leaders, then rejoin lines into paragraphs (with
de-hyphenation), keeping the page of every line so that any character of the result maps back to its page.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from slingshot.docs2qa.ingest import Document
from slingshot.recipe import CleanSection

# Lines within this many non-blank lines of a page's top or bottom are where headers and footers live.
EDGE_LINES = 4
BULLET = re.compile(r"^(?:[•◦▪▫‣∙·●○■□➢✓-]|o(?=\s+[A-Z])|\*|\+|\(?\d{1,2}[.)]|\(?[a-z][.)])\s+")
HEADING = re.compile(r"^(?:(?:\d+(?:\.\d+)*|[A-Z](?:\.\d+)+)\.?|(?:Appendix|APPENDIX|Chapter|CHAPTER|Section|SECTION)\s+"
                     r"[A-Z0-9]+[.:]?)\s+[A-Z]\S*")
PAGE_NUMBER = re.compile(r"^(?:page\s+)?(?:\d{1,4}|[ivxlc]{1,7}|[a-z]?\d{1,3}\s?[-–]\s?\d{1,3})(?:\s+of\s+\d{1,4})?$")
TOC_LEADER = re.compile(r"(?:\.\s?){5,}\s*(?:\d{1,4}|[ivxlc]{1,7}|[A-Z]-\d{1,3})?\s*$|…{2,}")
FOOTNOTE = re.compile(r"^(\d{1,3}) ?(?=[A-Z\"h])")
FOOTNOTE_LINES = 10  # a footnote block starts within the last this many lines of a page
SENTENCE_END = re.compile(r"[.!?:;][\"')\]]?$")
WORD = re.compile(r"[A-Za-z]+(?:-[A-Za-z]+)*")

QUOTES = str.maketrans({"‘": "'", "’": "'", "‚": "'", "‛": "'", "′": "'", "“": '"', "”": '"', "„": '"', "‟": '"',
                        "″": '"', "\t": " ", "\u00ad": None, "\u200b": None, "\u200c": None, "\u200d": None,
                        "\ufeff": None, "\u2028": "\n", "\u2029": "\n", "\r": None,
                        # Symbol-font bullets that PDF extraction returns as private-use characters
                        "\uf0b7": "•", "\uf0a7": "▪", "\uf0d8": "➢", "\uf0fc": "✓", "\uf06f": "o"})


@dataclass
class CleanText:
    """A document's clean text. `page_starts[i]` is where page `page_numbers[i]` begins in `text`."""

    name: str
    text: str
    page_starts: list[int]
    page_numbers: list[int]
    removed: Counter = field(default_factory=Counter)  # lines or joins per cleaning step, for the report

    def page_at(self, offset: int) -> int:
        """The page a character of `text` came from."""
        index = bisect.bisect_right(self.page_starts, offset) - 1
        return self.page_numbers[max(index, 0)]


@dataclass
class _Line:
    text: str
    page: int


def clean_document(document: Document, settings: CleanSection) -> CleanText:
    removed: Counter = Counter()
    pages = [(page.number, [line.strip() for line in _normalise(page.text, settings).split("\n")])
             for page in document.pages]
    if settings.drop_headers_footers and len(pages) >= 3:
        pages = _drop_repeated_edges(pages, settings.header_footer_min_share, removed)
    if settings.drop_footnotes:
        pages = [(number, _drop_footnotes(lines, removed)) for number, lines in pages]
    lines: list[_Line] = []
    for number, page_lines in pages:
        edge = _edge_indices(page_lines)
        for index, line in enumerate(page_lines):
            if settings.drop_page_numbers and index in edge and PAGE_NUMBER.match(line.lower()):
                removed["page_numbers"] += 1
            elif settings.drop_toc_leaders and TOC_LEADER.search(line):
                removed["toc_lines"] += 1
            else:
                lines.append(_Line(line, number))
    return _join(document.name, lines, settings, _vocabulary(lines), removed)


def _vocabulary(lines: list[_Line]) -> Counter:
    """Word counts of the document, leaving out the halves of words cut by a line-end hyphen."""
    counts: Counter = Counter()
    cut = False
    for line in lines:
        words = [word.lower() for word in WORD.findall(line.text)]
        if cut and words:
            words = words[1:]
        cut = line.text.endswith("-")
        if cut and words:
            words = words[:-1]
        counts.update(words)
    return counts


def _normalise(text: str, settings: CleanSection) -> str:
    text = text.replace("\r\n", "\n")
    if not settings.normalise_text:
        return text
    # NFKC turns ligatures (ﬁ), full-width forms and odd spaces into plain characters.
    text = unicodedata.normalize("NFKC", text).translate(QUOTES)
    # Some PDFs encode opening and closing quotes as a horizontal bar and a double vertical line (―like this‖).
    text = re.sub(r"―([^―‖\n]{1,300})‖", r'"\1"', text)
    text = "".join(char for char in text if char == "\n" or unicodedata.category(char) not in {"Cc", "Co", "Cf"})
    return re.sub(r"[^\S\n]+", " ", text)


def _edge_indices(lines: list[str]) -> set[int]:
    """Indices of the first and last EDGE_LINES non-blank lines of a page."""
    filled = [index for index, line in enumerate(lines) if line]
    return set(filled[:EDGE_LINES] + filled[-EDGE_LINES:])


def _edge_key(line: str) -> str:
    # Headers differ from page to page only by numbers ("CHAPTER 2 PAGE 14", "3-5", "iv"); ignore them.
    key = re.sub(r"\d+", "#", line.lower())
    key = re.sub(r"\b[ivxlc]{1,7}\b", "#", key)
    key = re.sub(r"\b[a-z]-#", "#", key)  # appendix pages: "E-3"
    key = re.sub(r"\b(appendix|annex|chapter|section|part) [a-z]\b", r"\1 #", key)
    return re.sub(r"\s+", " ", key).strip()


def _drop_repeated_edges(pages: list[tuple[int, list[str]]], min_share: float,
                         removed: Counter) -> list[tuple[int, list[str]]]:
    counts: Counter = Counter()
    for _, lines in pages:
        counts.update({_edge_key(lines[index]) for index in _edge_indices(lines)})
    threshold = max(3, min_share * len(pages))
    repeated = {key for key, count in counts.items() if count >= threshold and re.search(r"[a-z#]", key)}
    result = []
    for number, lines in pages:
        edge = _edge_indices(lines)
        kept = []
        for index, line in enumerate(lines):
            if index in edge and _edge_key(line) in repeated:
                removed["page_numbers" if PAGE_NUMBER.match(line.lower()) else "header_footer_lines"] += 1
            else:
                kept.append(line)
        result.append((number, kept))
    return result


def _drop_footnotes(lines: list[str], removed: Counter) -> list[str]:
    """A page without its footnotes: the block at the bottom that starts with a number marked in the body.

    A footnote is cut from the sentence it annotates and would otherwise split a paragraph that runs on to the next
    page. It counts as one only when the body carries its marker glued to a word ("infrastructure4"); the markers
    glued to words go too, so that questions do not quote them.
    """
    filled = [index for index, line in enumerate(lines) if line]
    for position in range(max(0, len(filled) - FOOTNOTE_LINES), len(filled)):
        number = FOOTNOTE.match(lines[filled[position]])
        if number and re.search(rf"[A-Za-z)\]\"'.,]{number.group(1)}\b", " ".join(lines[:filled[position]])):
            # Earlier footnotes of the block (n-1, n-2 ...) may have markers the test above cannot see ("20142").
            expected, start = int(number.group(1)) - 1, position
            for earlier in range(position - 1, max(-1, position - FOOTNOTE_LINES), -1):
                previous = FOOTNOTE.match(lines[filled[earlier]])
                if previous and int(previous.group(1)) == expected:
                    expected, start = expected - 1, earlier
            removed["footnote_lines"] += len(filled) - start
            body = lines[:filled[start]]
            for marker in range(expected + 1, int(number.group(1)) + 1):
                body = [re.sub(rf"(?<=[a-z)\]\"'.,]){marker}\b", "", line) for line in body]
            return body
    return lines


def _join(name: str, lines: list[_Line], settings: CleanSection, vocabulary: Counter, removed: Counter) -> CleanText:
    """Lines to paragraphs, recording the offset at which each page starts."""
    typical = _typical_length([line.text for line in lines])
    paragraphs: list[list[_Line]] = []
    current: list[_Line] = []
    for line in lines:
        text = line.text
        if not re.search(r"[A-Za-z0-9]", text):
            # blank lines, rules, lone bullet glyphs: a paragraph ends here
            if current:
                paragraphs.append(current)
                current = []
            continue
        if current and _starts_paragraph(current[-1], line, typical, settings.merge_lines):
            paragraphs.append(current)
            current = []
        current.append(line)
    if current:
        paragraphs.append(current)

    text_parts: list[str] = []
    page_starts: list[int] = []
    page_numbers: list[int] = []
    offset = 0
    for paragraph in paragraphs:
        if text_parts:
            text_parts.append("\n\n")
            offset += 2
        for index, line in enumerate(paragraph):
            if index:
                joiner = " " if settings.merge_lines else "\n"
                if settings.dehyphenate and _hyphen_break(paragraph[index - 1].text, line.text, vocabulary):
                    text_parts[-1] = text_parts[-1][:-1]  # the hyphen goes, the word is whole again
                    offset -= 1
                    joiner = ""
                    removed["dehyphenated"] += 1
                elif settings.dehyphenate and paragraph[index - 1].text.endswith("-") and line.text[:1].islower():
                    joiner = ""  # a real compound ("copy-on-write") broken at its hyphen: rejoin, keep the hyphen
                text_parts.append(joiner)
                offset += len(joiner)
            if not page_numbers or page_numbers[-1] != line.page:
                page_starts.append(offset)
                page_numbers.append(line.page)
            text_parts.append(line.text)
            offset += len(line.text)
    if settings.merge_lines:
        removed["lines_merged"] = sum(len(paragraph) - 1 for paragraph in paragraphs)
    return CleanText(name, "".join(text_parts), page_starts or [0], page_numbers or [1], removed)


def _typical_length(lines: list[str]) -> int:
    """The length of a full line of body text: the 80th percentile of non-blank line lengths."""
    lengths = sorted(len(line) for line in lines if line)
    return lengths[int(0.8 * (len(lengths) - 1))] if lengths else 80


def _starts_paragraph(previous: _Line, line: _Line, typical: int, merge_lines: bool) -> bool:
    if not merge_lines:
        return False  # only blank lines separate paragraphs; the lines keep their breaks
    before, text = previous.text, line.text
    if BULLET.match(text) or HEADING.match(text) or HEADING.match(before):
        return True
    ends_sentence = bool(SENTENCE_END.search(before))
    if line.page != previous.page:
        return ends_sentence or not text[:1].islower()
    if ends_sentence and len(before) < 0.75 * typical:
        return True  # a short line that ends a sentence is the last line of its paragraph
    # a short line without final punctuation, followed by a capital: a title or a table cell
    return len(before) < 0.5 * typical and not ends_sentence and text[:1].isupper() and not before.endswith(",")


def _hyphen_break(before: str, after: str, vocabulary: Counter) -> bool:
    """True when 'infor-' + 'mation' is one word cut at the line end, False for a compound such as 'off-' + 'site'."""
    head = re.search(r"([A-Za-z]+)-$", before)
    tail = re.match(r"([a-z]+)", after)
    if not head or not tail:
        return False
    first, second = head.group(1).lower(), tail.group(1).lower()
    joined, hyphenated = first + second, f"{first}-{second}"
    if vocabulary[joined] > vocabulary[hyphenated]:
        return True
    # Otherwise a cut word, unless the document writes it with a hyphen or both halves are words of their own.
    both_words = vocabulary[first] and vocabulary[second] and len(first) > 2 and len(second) > 2
    return not (vocabulary[hyphenated] or both_words)
