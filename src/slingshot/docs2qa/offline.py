"""The offline generator: extractive question-answer pairs from a chunk's own sentences, no LLM needed.

Each answer is an exact span of the chunk (its offset recorded), found by patterns that reliably carry a fact:
acronym definitions ("Personally Identifiable Information (PII)"), definitions ("An image is a package that ..."),
"X means / refers to / consists of / includes Y", purposes, aliases ("also known as"), enumerations after a colon,
and numeric facts (quantities with a unit, percentages, years). Sentences that look like table debris, or whose
subject is a pronoun ("This is ...") are passed over: a question must make sense without the chunk in front of you.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from slingshot.docs2qa.chunk import Chunk, sentence_spans
from slingshot.docs2qa.pairs import QAPair, pair_from_span

# A subject may not start with these: the question would need the surrounding text to make sense.
VAGUE_STARTS = {
    "this", "that", "these", "those", "it", "they", "there", "such", "each", "some", "all", "many", "most", "other",
    "another", "which", "what", "here", "one", "both", "either", "neither", "any", "no", "its", "their", "our", "we",
    "you", "he", "she", "his", "her", "in", "for", "to", "with", "on", "at", "by", "from", "as", "if", "when",
    "while", "because", "although", "however", "also", "then", "thus", "therefore", "so", "but", "and", "or",
    "following", "above", "below", "same", "former", "latter", "example", "figure", "table", "section", "appendix",
    "step", "task", "chapter", "part", "only", "not", "an", "a", "the", "since", "after", "before", "unless", "once",
    "whether", "until", "where", "how", "why", "like", "unlike", "given", "during", "through", "without", "within",
    "under", "over", "between", "among", "about", "against", "into", "upon", "more", "less", "even", "very", "much",
}
# Nor contain these: a verb or a clause marker means the regex split the sentence in the wrong place.
SUBJECT_BREAKERS = {
    "is", "are", "was", "were", "be", "been", "has", "have", "had", "do", "does", "should", "shall", "may", "might",
    "can", "could", "will", "would", "must", "not", "that", "which", "who", "if", "when", "where", "because", "also",
    "this", "these", "it", "they", "than", "then", "there", "more", "less", "even", "very", "most", "often",
    "usually", "typically", "generally", "sometimes", "always", "never", "still", "already", "figure", "table",
    "section", "above", "below", "following", "appendix",
}
# "Potentially even more critical is ...": an adverb first means the subject comes after the verb ("nightly" is fine).
ADVERB_ENDINGS = ("ally", "ently", "ously", "ively", "ately", "antly", "ibly", "ably")
# Alone, these subjects need the passage: "Examples include ...", "Considerations include ...".
GENERIC_NOUNS = {"examples", "considerations", "others", "results", "options", "activities", "items", "steps",
                 "issues", "factors", "benefits", "challenges", "use"}
# The head noun of "the parties described in Figure 3" is the word before the first of these.
HEAD_ENDERS = {"of", "in", "for", "on", "at", "by", "with", "from", "to", "described", "used", "provided", "listed",
               "such", "within", "across", "between", "under"}
DISCOURSE = re.compile(r"^(?:For example|For instance|In addition|Additionally|Generally|In general|Typically|"
                       r"Similarly|Moreover|Furthermore|Thus|Therefore|However|Also|In practice|In short|Simply put|"
                       r"In other words|Finally|First|Second|Third),\s+")
LEAD = re.compile(r"^(?:[•◦▪‣➢✓*+-]|o(?=\s)|\(?\d{1,2}[.)]|\(?[a-z][.)])\s+")  # list markers before a sentence
SUBJECT = r"(?P<subject>(?:(?:An?|The)\s+)?[A-Za-z][\w'/&-]*(?:\s+[\w'/&()-]+){0,5}?)"

# (pattern over a sentence, kind, question template); {subject} and, for plurals, {be}/{do} are filled in.
DEFINITIONS = [
    (re.compile(r"^The (?P<what>purpose|goal|objective|aim|intent) of (?P<subject>[^,;]{3,80}?) (?:is|are) "
                r"(?P<answer>to .+)$"), "purpose", "What is the {what} of {subject}?"),
    (re.compile(SUBJECT + r",? (?:(?:is|are) )?(?:also |sometimes |commonly )?(?:known|referred to|called) as "
                r"(?P<answer>[^,;]+?)(?=,|$)"), "alias", "What {be} {subject} also known as?"),
    (re.compile(SUBJECT + r" (?:is|are) (?:formally |commonly |often )?defined as (?P<answer>.+)$"), "definition",
     "How {be} {subject} defined?"),
    (re.compile(SUBJECT + r" (?:means|mean|refers to|refer to) (?P<answer>.+)$"), "definition",
     "What {do} {subject} {means}?"),
    (re.compile(SUBJECT + r" can be (?:characterized|described|thought of|viewed) as (?P<answer>.+)$"), "definition",
     "How can {subject} be characterized?"),
    (re.compile(SUBJECT + r" (?:consists|consist) of (?P<answer>.+)$"), "list", "What {do} {subject} consist of?"),
    (re.compile(SUBJECT + r" (?:comprises|comprise|is composed of|are composed of) (?P<answer>.+)$"), "list",
     "What {do} {subject} comprise?"),
    (re.compile(SUBJECT + r" (?:includes|include) (?P<answer>.+)$"), "list", "What {do} {subject} include?"),
    (re.compile(SUBJECT + r" (?:is|are) (?:primarily |mainly |typically )?used (?P<answer>(?:to|for) .+)$"), "purpose",
     "What {be} {subject} used for?"),
    (re.compile(SUBJECT + r" (?:is|are) responsible for (?P<answer>.+)$"), "purpose",
     "What {be} {subject} responsible for?"),
    (re.compile(SUBJECT + r" (?:is|are) (?P<answer>(?:a|an|the|one of the) .+)$"), "definition", "What {be} {subject}?"),
]
ACRONYM = re.compile(r"\(([A-Z][A-Za-z0-9&/-]{1,9})\)")
ACRONYM_FIRST = re.compile(r"\b([A-Z][A-Z0-9&/-]{1,9}s?) \(([a-zA-Z][^()]{4,80})\)")
NUMBER_WORDS = r"(?:two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|fifteen|twenty|thirty|hundred)"
UNITS = (r"(?:characters?|digits?|bits?|bytes?|[KMG]B|seconds?|minutes?|hours?|days?|weeks?|months?|years?|times|"
         r"attempts?|tries|levels?|steps?|phases?|parts?|categories|functions?|tiers?|stages?|components?|"
         r"elements?|types?|classes|factors?|requirements?|questions?|controls?|sectors?|members?|workshops?|"
         r"comments?|responses?|pages?|percent)")
QUANTITY = re.compile(rf"(?<![-\w.,/])(?P<answer>(?:\d[\d,]*(?:\.\d+)?|{NUMBER_WORDS})(?:\s?%| {UNITS}))(?=[\s.,;:)]|$)")
YEAR = re.compile(r"\b(?P<lead>in|since|until|by|during) (?P<answer>(?:19|20)\d\d)\b(?![-/.]\d)")
LINKING_WORDS = {"of", "and", "the", "for", "to", "in", "on", "a", "an", "with", "or", "by"}
PRIORITY = {"purpose": 4, "alias": 4, "definition": 4, "list": 3, "acronym": 2, "number": 1, "year": 1}
MAX_ANSWER_WORDS = 30


@dataclass
class _Candidate:
    question: str
    start: int  # answer span in the chunk
    end: int
    kind: str
    sentence: int


def generate_offline(chunk: Chunk, limit: int) -> list[QAPair]:
    """Up to `limit` extractive pairs from the sentences that begin in the chunk's new (non-overlap) part.

    At most one pair per sentence, best kinds first (definitions before acronyms before numbers), then in reading
    order, so a chunk's pairs cover different facts.
    """
    candidates: list[_Candidate] = []
    sentences = [span for paragraph in re.finditer(r"[^\n]+", chunk.text)
                 if paragraph.end() > chunk.fresh_start
                 for span in sentence_spans(chunk.text, max(paragraph.start(), chunk.fresh_start), paragraph.end())]
    for index, (start, end) in enumerate(sentences):
        candidates += _sentence_candidates(chunk.text, start, end, index)
    candidates.sort(key=lambda c: (-PRIORITY[c.kind], c.sentence))
    chosen: list[_Candidate] = []
    used_sentences: set[int] = set()
    for candidate in candidates:
        if len(chosen) == limit:
            break
        # One acronym a chunk: documents spell out dozens, and they would crowd out the facts.
        if candidate.sentence not in used_sentences and not (
                candidate.kind == "acronym" and any(c.kind == "acronym" for c in chosen)):
            used_sentences.add(candidate.sentence)
            chosen.append(candidate)
    chosen.sort(key=lambda c: c.start)
    return [pair_from_span(chunk, c.question, c.start, c.end, c.kind) for c in chosen]


def _sentence_candidates(text: str, start: int, end: int, index: int) -> list[_Candidate]:
    sentence = text[start:end]
    lead = LEAD.match(sentence)
    offset = lead.end() if lead else 0
    if not _looks_like_prose(sentence[offset:]):
        return []
    found = _acronyms(sentence, start, index)
    body_offset = offset + (m.end() if (m := DISCOURSE.match(sentence[offset:])) else 0)
    body = sentence[body_offset:].rstrip(".").rstrip()
    for pattern, kind, template in DEFINITIONS:
        match = pattern.match(body)
        if not match:
            continue
        candidate = _definition(match, kind, template, start + body_offset, index)
        if candidate is not None:
            found.append(candidate)
            break
    found += _numeric(sentence, start, index, offset)
    return found


def _looks_like_prose(sentence: str) -> bool:
    """A whole sentence of words, not a table row, heading or reference."""
    words = sentence.split()
    if not 6 <= len(words) <= 60 or not sentence.endswith(".") or not sentence[:1].isupper():
        return False
    if any(re.fullmatch(r"\d[\d.,–-]*", word) for word in words[:4]):
        return False  # "High 80-95 8 Error, accident ...": a table row read as a sentence
    letters = sum(char.isalpha() for char in sentence)
    lower_words = sum(word[:1].islower() for word in words)
    return letters >= 0.7 * len(sentence.replace(" ", "")) and lower_words >= 0.4 * len(words) and "http" not in sentence


def _definition(match: re.Match, kind: str, template: str, base: int, index: int) -> _Candidate | None:
    subject = match.group("subject").strip()
    words = subject.split()
    if not 1 <= len(words) <= 8 or words[0].lower().strip("(") in VAGUE_STARTS - {"a", "an", "the"}:
        return None
    content = words[1:] if words[0].lower() in {"a", "an", "the"} else words
    if (not content or content[0].lower() in VAGUE_STARTS or (len(content) == 1 and content[0].lower() in GENERIC_NOUNS) or content[0].lower().endswith(ADVERB_ENDINGS)
            or any(w.lower() in SUBJECT_BREAKERS for w in content)):
        return None
    if subject.count("(") != subject.count(")") or any(w in {"a", "an", "the"} for w in content[1:] + content[-1:]):
        return None  # "The Framework provides a" is not a subject: the verb was taken for a noun
    answer_start, answer_end = _trim_answer(match, "answer")
    answer_words = set(match.string[answer_start:answer_end].lower().split())
    if answer_end - answer_start < 2 or answer_words & {"this", "these", "above", "below", "following"}:
        return None  # "the function that enables this goal" answers nothing on its own
    head = next((i for i, word in enumerate(content) if word.lower() in HEAD_ENDERS), len(content))
    plural = _is_plural(content[max(head - 1, 0)])
    question = template.format(
        subject=_lower_first(subject), be="are" if plural else "is", do="do" if plural else "does",
        means="mean" if re.match(r"\s*means?\b", match.string[match.end("subject"):]) else "refer to",
        what=match.groupdict().get("what") or "",
    )
    return _Candidate(question, base + answer_start, base + answer_end, kind, index)


def _trim_answer(match: re.Match, group: str) -> tuple[int, int]:
    """The answer span, cut after an enumeration's colon and at a clause end when it runs too long."""
    start, end = match.span(group)
    answer = match.string[start:end]
    colon = re.search(r"(?::|—|--)\s*(?=\S)", answer)
    if colon and len(re.findall(r",", answer[colon.end():])) >= 1:
        start += colon.end()  # "three parts: the Core, the Tiers, and the Profiles" -> the list itself
        answer = match.string[start:end]
    if len(answer.split()) > MAX_ANSWER_WORDS:
        cut = re.search(r";|, (?:which|while|whereas|and thus|so that|but|including|such as)\b| - | – ", answer)
        if cut is None or len(answer[:cut.start()].split()) > MAX_ANSWER_WORDS:
            return start, start  # too long to be a good answer
        end = start + cut.start()
    while end > start and match.string[end - 1] in " ,;:":
        end -= 1
    return start, end


def _is_plural(word: str) -> bool:
    lower = word.lower().strip("()")
    return lower.endswith("s") and not lower.endswith(("ss", "us", "is", "ys")) and not word.isupper()


def _lower_first(subject: str) -> str:
    first, _, rest = subject.partition(" ")
    # "An image" -> "an image", "The Framework Core" -> "the Framework Core", but "NIST" and "Containers'" stay
    if first in {"A", "An", "The"} or (first[:1].isupper() and first[1:].islower() and len(first) > 1 and rest == ""):
        return (first.lower() + (" " + rest if rest else "")).strip()
    if first[:1].isupper() and first[1:].islower() and rest and rest[:1].islower():
        return first.lower() + " " + rest
    return subject


def _acronyms(sentence: str, base: int, index: int) -> list[_Candidate]:
    found = []
    for match in ACRONYM.finditer(sentence):
        short = match.group(1)
        if sum(char.isupper() for char in short) < 2:
            continue
        window_start = max(0, match.start() - 12 * len(short) - 20)
        long_form = _long_form(short, sentence[window_start:match.start()].rstrip())
        if long_form is None:
            continue
        span_end = window_start + len(sentence[window_start:match.start()].rstrip())
        span_start = span_end - len(long_form)
        found.append(_Candidate(f"What does {short} stand for?", base + span_start, base + span_end, "acronym", index))
    for match in ACRONYM_FIRST.finditer(sentence):
        short, long_form = match.group(1), match.group(2).strip()
        if _long_form(short.rstrip("s"), long_form) == long_form:
            start = match.start(2) + (len(match.group(2)) - len(match.group(2).lstrip()))
            found.append(_Candidate(f"What does {short} stand for?", base + start, base + start + len(long_form),
                                    "acronym", index))
    return found


def _long_form(short: str, before: str) -> str | None:
    """The words of `before` that `short` abbreviates (Schwartz & Hearst, PSB 2003), or None.

    Each character of the short form, from the last, is matched in the text from the right; the first must begin
    a word. Then the long form must have no more words than min(|short| + 5, 2 |short|).
    """
    letters = [char.lower() for char in short if char.isalnum()]
    s, position = len(letters) - 1, len(before) - 1
    while s >= 0:
        char = letters[s]
        while position >= 0 and (before[position].lower() != char or
                                 (s == 0 and position > 0 and before[position - 1].isalnum()) or
                                 # "Office of Management and Budget (OMB)": the O is Office's, not of's
                                 (s == 0 and before[position:].split(" ", 1)[0] in LINKING_WORDS)):
            position -= 1
        if position < 0:
            return None
        position -= 1
        s -= 1
    start = before.rfind(" ", 0, position + 1) + 1
    long_form = before[start:].strip()
    words = long_form.split()
    if (len(words) < 2 or len(words) > min(len(letters) + 5, 2 * len(letters)) or long_form.lower() == short.lower()
            or not long_form[:1].isalpha() or any(char in long_form for char in "()[];:\n")
            or (any(char.isdigit() for char in long_form) and not any(char.isdigit() for char in short))):
        return None
    # Schwartz & Hearst accept letters from inside words: IIF -> "identifiable form". Ask that the word initials
    # spell all but one of the capitals (all of them for three or fewer).
    capitals = [char.lower() for char in short.rstrip("s") if char.isalnum()]
    initials = [word[0].lower() for word in re.split(r"[\s/-]+", long_form) if word and word.lower() not in LINKING_WORDS]
    if _common_subsequence(capitals, initials) < len(capitals) - (1 if len(capitals) >= 4 else 0):
        return None
    return long_form


def _common_subsequence(first: list[str], second: list[str]) -> int:
    """Length of the longest common subsequence (dynamic programming; both are a few letters long)."""
    table = [[0] * (len(second) + 1) for _ in range(len(first) + 1)]
    for i, a in enumerate(first):
        for j, b in enumerate(second):
            table[i + 1][j + 1] = table[i][j] + 1 if a == b else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def _numeric(sentence: str, base: int, index: int, offset: int) -> list[_Candidate]:
    """Cloze questions on a quantity ("at least how many characters") or a year ("in what year")."""
    if len(sentence.split()) > 35 or ":" in sentence:
        return []
    found = []
    for match in QUANTITY.finditer(sentence, offset):
        before = sentence[offset:match.start()]
        if match.start() <= offset + 1 or before.lower().endswith("the ") or before.count("(") > before.count(")"):
            continue  # "The three phases", "(e.g., 2 minutes)": the blank would read badly
        unit = match.group("answer").split()[-1] if " " in match.group("answer") else "%"
        asked = "what percentage" if unit in {"%", "percent"} else f"how many {unit if unit.endswith('s') else unit + 's'}"
        question = sentence[offset:match.start()] + asked + sentence[match.end():].rstrip(".") + "?"
        found.append(_Candidate(question, base + match.start(), base + match.end(), "number", index))
        break
    for match in YEAR.finditer(sentence, offset):
        if len(YEAR.findall(sentence)) > 1:
            break  # "revised during 2017 and 2018": one blank would be ambiguous
        question = sentence[offset:match.start("answer")] + "what year" + sentence[match.end():].rstrip(".") + "?"
        found.append(_Candidate(question, base + match.start("answer"), base + match.end("answer"), "year", index))
    return found
