"""How sure a teacher is of a label: from token log-probabilities, or from agreement across sampled answers.

Pure functions of what the endpoint returned; `label.py` feeds them. Both give a number in [0, 1] that is meant to
rank answers (right ones above wrong ones), which is what filtering and weighting by confidence need.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

# Characters around a label inside one token that are not part of it: spaces, quotes, JSON punctuation.
_AROUND_LABEL = " \t\n\"'`*:{}[],.;!"


def logprob_confidence(label: str, label_names: list[str], logprobs: list[dict[str, Any]] | None) -> float | None:
    """Probability of `label` among the label candidates at the token where the answer first names it.

    At that token, every alternative the endpoint returned (`top`, plus the chosen token itself) counts for each
    label it begins, case and surrounding quotes or spaces ignored: "pos" counts for "positive". The chosen label's
    probability mass is divided by the mass of all labels, so mass on tokens that begin no label (", "The") does not
    lower the confidence. A token that begins two labels counts for both. None when the log-probabilities do not
    show the label (absent, or the answer names it where no token starts it).
    """
    if not logprobs:
        return None
    tokens = [str(item.get("token", "")) for item in logprobs]
    text = "".join(tokens).lower()
    found = re.search(rf"(?<!\w){re.escape(label.lower())}(?!\w)", text)
    if found is None:
        return None
    position, offset = 0, 0
    for position, token in enumerate(tokens):  # the token holding the label's first character
        if offset + len(token) > found.start():
            break
        offset += len(token)
    item = logprobs[position]
    alternatives = {item["token"]: item["logprob"]}
    for top in item.get("top") or []:
        alternatives.setdefault(top["token"], top["logprob"])
    mass = dict.fromkeys(label_names, 0.0)
    for token, logprob in alternatives.items():
        stem = token.strip(_AROUND_LABEL).lower()
        if not stem or logprob is None:
            continue
        for name in label_names:
            if name.lower().startswith(stem):
                mass[name] += math.exp(logprob)
    total = sum(mass.values())
    if total <= 0 or mass.get(label, 0.0) <= 0:
        return None
    return mass[label] / total


def agreement(answers: list[str | None]) -> tuple[str | None, float]:
    """The majority label of n sampled answers and the share of the n that gave it.

    Invalid answers (None) count in n but vote for nothing. A tie goes to the label answered first, so the
    first (greedy) answer wins ties. All answers invalid: (None, 0.0).
    """
    votes = Counter(answer for answer in answers if answer is not None)
    if not votes:
        return None, 0.0
    best = max(votes.values())
    winner = next(answer for answer in answers if answer is not None and votes[answer] == best)
    return winner, best / len(answers)


def accuracy_by_min_confidence(correct: list[bool], confidences: list[float | None],
                               thresholds: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)) -> list[dict]:
    """Share of labels kept and their accuracy at each minimum confidence: what `data.min_confidence` would buy.
    Labels without a confidence are left out."""
    pairs = [(right, confidence) for right, confidence in zip(correct, confidences) if confidence is not None]
    rows = []
    for threshold in thresholds:
        kept = [right for right, confidence in pairs if confidence >= threshold]
        rows.append({"min_confidence": threshold, "kept": len(kept),
                     "kept_share": round(len(kept) / len(pairs), 4) if pairs else None,
                     "accuracy": round(sum(kept) / len(kept), 4) if kept else None})
    return rows
