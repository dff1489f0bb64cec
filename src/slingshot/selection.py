"""`slingshot select`: the unlabelled texts whose labels would help a run most (active learning).

Order of work: load the run, read the pool, drop exact duplicates and texts the run already has labels for (an
identical text never needs a second label), one forward pass for each text's class probabilities and embedding,
pick by strategy, write the picks with the reason they were picked.

- uncertainty: the texts the model is least sure of (smallest margin between its top two classes, or highest
  entropy) — Lewis & Gale 1994; Settles, "Active Learning Literature Survey", 2009, section 3.1.
- diverse: k-center greedy on the model's embeddings, each pick the text farthest from everything labelled or
  picked so far — the core-set approach of Sener & Savarese, ICLR 2018.
- mixed: k-center greedy among the n x `mixed_pool_factor` most uncertain texts, so the picks are uncertain and
  not near-duplicates of each other (as in Zhdanov 2019, "Diverse mini-batch active learning").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slingshot.errors import DataError, RecipeError, RunDirError, SlingshotError
from slingshot.recipe import SelectSection

# Embedding every labelled text of a large training set would cost more than the selection; a seeded sample of this
# many still marks where the labelled data already is.
LABELLED_CENTRES_MAX = 5000


def uncertainty(probabilities: np.ndarray, measure: str) -> np.ndarray:
    """(rows,) how unsure the model is of each row of (rows, classes) probabilities; higher is less sure.
    margin: 1 - (top - second), in [0, 1]; entropy: in nats."""
    if measure == "entropy":
        return -(probabilities * np.log(np.clip(probabilities, 1e-12, None))).sum(axis=1)
    top_two = np.sort(probabilities, axis=1)[:, -2:]  # (rows, 2)
    return 1.0 - (top_two[:, 1] - top_two[:, 0])


def k_center_greedy(embeddings: np.ndarray, count: int, candidates: np.ndarray | None = None,
                    centres: np.ndarray | None = None) -> list[int]:
    """Farthest-first picks among `candidates` (row indices of embeddings, default all): each pick is the row with
    the largest distance to its nearest centre or earlier pick. Without centres the first pick is the row nearest
    the candidates' mean (a typical text, not an outlier). Cosine distance on the (rows, dim) embeddings."""
    vectors = embeddings / np.clip(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12, None)
    candidates = np.arange(len(vectors)) if candidates is None else np.asarray(candidates)
    pool = vectors[candidates]  # (candidates, dim)
    nearest = np.full(len(pool), np.inf)
    if centres is not None and len(centres):
        centres = centres / np.clip(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12, None)
        for start in range(0, len(centres), 1024):  # chunks bound the (candidates, chunk) distance matrix
            nearest = np.minimum(nearest, (1.0 - pool @ centres[start:start + 1024].T).min(axis=1))
    picks: list[int] = []
    taken = np.zeros(len(pool), dtype=bool)
    for _ in range(min(count, len(pool))):
        if np.isinf(nearest).all():
            choice = int(np.argmax(pool @ pool.mean(axis=0)))
        else:
            choice = int(np.argmax(np.where(taken, -np.inf, nearest)))
        taken[choice] = True
        picks.append(int(candidates[choice]))
        nearest = np.minimum(nearest, 1.0 - pool @ pool[choice])
    return picks


def choose(probabilities: np.ndarray, embeddings: np.ndarray, options: SelectSection,
           centres: np.ndarray | None = None) -> tuple[list[int], np.ndarray]:
    """Row indices to label next, in pick order, and every row's uncertainty."""
    unsure = uncertainty(probabilities, options.uncertainty)
    # ties broken by row order, so a rerun picks the same texts
    most_unsure = np.lexsort((np.arange(len(unsure)), -unsure))
    if options.strategy == "uncertainty":
        return [int(i) for i in most_unsure[: options.n]], unsure
    if options.strategy == "diverse":
        return k_center_greedy(embeddings, options.n, centres=centres), unsure
    candidates = most_unsure[: options.n * options.mixed_pool_factor]
    return k_center_greedy(embeddings, options.n, candidates=candidates, centres=centres), unsure


def text_key(text: str, pair: str | None = None) -> str:
    """What makes two texts the same for labelling: case and spacing ignored."""
    return " ".join(text.lower().split()) + ("\x00" + " ".join(pair.lower().split()) if pair is not None else "")


@dataclass
class Selection:
    path: Path
    report: dict[str, Any]


def select_file(run_path: str, pool_path: str, options: SelectSection, *, output: str | None = None,
                log: Callable[[str], None] = lambda message: None) -> Selection:
    """Pick `options.n` texts of a pool for a finished classification run; write them with their scores.

    Raises:
        RunDirError: the run is unfinished, or the output file exists.
        RecipeError: the run is a regression (there is no class uncertainty).
        DataError: the pool is missing, malformed, or has no text left to pick.
    """
    from slingshot.data import read_rows, to_examples
    from slingshot.evaluate import load_run
    from slingshot.rundir import write_table

    loaded = load_run(run_path)
    if loaded.label_names is None:
        raise RecipeError(f"run {loaded.run.path} is a regression; selection needs class probabilities",
                          "select with a classification run")
    target = Path(output) if output else loaded.run.path / f"selected-{options.strategy}.csv"
    if target.exists():
        raise RunDirError(f"{target} already exists; it is not overwritten", "pass another --output, or delete it")
    recipe = loaded.recipe
    rows = read_rows(pool_path)
    examples, skipped = to_examples(rows, recipe, need_label=False)

    labelled_texts, labelled_note = labelled(loaded)
    labelled_keys = {text_key(text, pair) for text, pair in labelled_texts}
    seen: set[str] = set()
    already, duplicates, pool = 0, 0, []
    for example in examples:
        key = text_key(example["text"], example.get("text_pair"))
        if key in labelled_keys:
            already += 1
        elif key in seen:
            duplicates += 1
        else:
            seen.add(key)
            pool.append(example)
    if not pool:
        raise DataError(f"{rows.source}: no text left to pick ({len(examples)} texts, {already} already labelled, "
                        f"{duplicates} duplicates, {skipped.count} empty)", "give a pool of new texts")
    log(f"scoring {len(pool)} texts of {rows.source} with {loaded.run.path}")
    probabilities, embeddings = score_texts(loaded, [e["text"] for e in pool],
                                            [e["text_pair"] for e in pool] if recipe.data.text_pair_column else None)
    centres = None
    if labelled_texts and options.strategy != "uncertainty":
        sample = np.random.default_rng(0).permutation(len(labelled_texts))[:LABELLED_CENTRES_MAX]
        chosen = [labelled_texts[i] for i in sorted(sample)]
        _, centres = score_texts(loaded, [t for t, _ in chosen],
                                 [p for _, p in chosen] if recipe.data.text_pair_column else None)
    picks, unsure = choose(probabilities, embeddings, options, centres)

    by_line = dict(zip(rows.lines, rows.records))
    extra = ["predicted", "probability", f"uncertainty_{options.uncertainty}", "pick"]
    records = []
    for rank, index in enumerate(picks, start=1):
        record = dict(by_line[pool[index]["row"]])
        best = int(np.argmax(probabilities[index]))
        record.update({extra[0]: loaded.label_names[best], extra[1]: round(float(probabilities[index][best]), 6),
                       extra[2]: round(float(unsure[index]), 6), "pick": rank})
        records.append(record)
    write_table(target, records, [c for c in rows.columns if c not in extra] + extra)
    report = {"run": str(loaded.run.path), "pool": rows.source, "output": str(target), "strategy": options.strategy,
              "uncertainty": options.uncertainty, "picked": len(records), "pool_texts": len(examples),
              "candidates": len(pool), "already_labelled": already, "duplicates_dropped": duplicates,
              "skipped_empty": skipped.count, "labelled_reference": labelled_note,
              "mean_uncertainty_picked": round(float(np.mean([unsure[i] for i in picks])), 4),
              "mean_uncertainty_pool": round(float(np.mean(unsure)), 4)}
    return Selection(target, report)


def labelled(loaded) -> tuple[list[tuple[str, str | None]], str]:
    """(text, pair) of everything the run was trained or evaluated on, and where they came from."""
    from slingshot.data import load_data

    try:
        data = load_data(loaded.recipe, strict=False, splits=("train", "eval"))
    except SlingshotError as error:
        return [], f"the run's data could not be read ({error.message}); picks are compared with the pool only"
    texts = []
    for dataset in data.splits.values():
        pairs = dataset["text_pair"] if "text_pair" in dataset.column_names else [None] * len(dataset)
        texts += list(zip(dataset["text"], pairs))
    return texts, f"{len(texts)} texts of {data.sources['train']}"


def score_texts(loaded, texts: list[str], pairs: list[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """(rows, classes) probabilities and (rows, hidden) embeddings from one forward pass of the run's model."""
    from slingshot.inference import encode_texts, logits_and_embeddings
    from slingshot.tasks.classification import _model_max_length, softmax

    max_length = min(loaded.recipe.model.max_length, _model_max_length(loaded.tokenizer))
    encoded = encode_texts(loaded.tokenizer, texts, pairs, max_length)
    logits, embeddings = logits_and_embeddings(loaded.model, encoded, loaded.task.collator(loaded.tokenizer))
    return softmax(logits.astype(np.float64)), embeddings  # type: ignore[return-value]
