"""Loading labelled data into `datasets.Dataset` splits with the columns every task reads: text, text_pair, label.

Files are parsed here rather than by `datasets.load_dataset("csv")` so that a malformed row or a non-UTF-8 byte
is reported with its file and line number, which pandas' parser does not give for encoding errors.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset

from slingshot.errors import DataError
from slingshot.recipe import Recipe

SPLITS = ("train", "eval", "test")
ALL_SPLITS = (*SPLITS, "gold")  # gold: human labels kept apart from teacher-labelled training data
SPLIT_FILE_STEMS = {
    "train": ("train", "training"),
    "eval": ("eval", "dev", "validation", "valid", "val"),
    "test": ("test",),
}
HUB_SPLIT_NAMES = {"train": ("train",), "eval": ("validation", "dev", "eval", "valid"), "test": ("test",)}


@dataclass
class Rows:
    """Raw records of one source, each with the line (or row number) it came from."""

    records: list[dict[str, Any]]
    lines: list[int]
    source: str
    columns: list[str]


@dataclass
class Skipped:
    """Rows left out of a split because their text is empty or whitespace (or, in QA data, for the reasons counted)."""

    count: int = 0
    examples: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)  # reason -> rows; empty when the only reason is empty text

    def add(self, reason: str, where: str) -> None:
        self.count += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if len(self.examples) < 3:
            self.examples.append(where)


@dataclass
class LoadedData:
    """The splits a task trains and evaluates on, plus what loading found."""

    splits: dict[str, Dataset]
    label_names: list[str] | None
    sources: dict[str, str]
    skipped: dict[str, Skipped]
    unseen_eval_labels: dict[str, dict[str, int]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)  # where the training labels came from


# ---------------------------------------------------------------------------------------------------- reading


def read_rows(source: str, *, config: str | None = None, split: str | None = None) -> Rows:
    """Read one file (CSV, TSV, JSONL, JSON, Parquet) or one split of a Hugging Face dataset id into records."""
    path = Path(source)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in {".csv", ".tsv", ".txt"}:
            return _read_delimited(path, "\t" if suffix == ".tsv" else ",")
        if suffix == ".jsonl":
            return _read_jsonl(path)
        if suffix == ".json":
            return _read_json(path)
        if suffix == ".parquet":
            table = Dataset.from_parquet(str(path))
            return Rows(table.to_list(), list(range(1, len(table) + 1)), str(path), table.column_names)
        raise DataError(
            f"unsupported data file type '{suffix}': {path}", "use .csv, .tsv, .jsonl, .json or .parquet"
        )
    if path.is_dir():
        raise DataError(f"{path} is a folder; name a file in it", "point data.train at the folder, or at one file")
    if _looks_like_local(source):
        raise DataError(f"data file not found: {path}", "check the path; relative paths are read from the recipe's folder")
    return _read_hub(source, config=config, split=split or "train")


def _looks_like_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).suffix.lower() in {
        ".csv", ".tsv", ".txt", ".jsonl", ".json", ".parquet",
    } or source.count("/") > 1 or "\\" in source


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: bytes that are not UTF-8 ({data[exc.start:exc.start + 4]!r})",
            "re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`)",
        ) from None


def _read_delimited(path: Path, delimiter: str) -> Rows:
    text = _decode(path)
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path} is empty", "add a header row and data rows") from None
    except csv.Error as exc:
        raise DataError(f"{path}:1: malformed header ({exc})", "fix the header row") from None
    header = [h.strip() for h in header]
    records, lines = [], []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: malformed row ({exc})", "fix the quoting on that line") from None
        if not row:  # a blank line
            continue
        if len(row) != len(header):
            raise DataError(
                f"{path}:{reader.line_num}: malformed row: {len(row)} fields where the header has {len(header)}",
                "quote fields that contain the delimiter, or fix that line",
            )
        records.append(dict(zip(header, row)))
        lines.append(reader.line_num)
    return Rows(records, lines, str(path), header)


def _read_jsonl(path: Path) -> Rows:
    records, lines, columns = [], [], {}
    for number, line in enumerate(_decode(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: malformed JSON ({exc.msg})", "each line must be one JSON object") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
        lines.append(number)
        columns.update(dict.fromkeys(record))
    return Rows(records, lines, str(path), list(columns))


def _read_json(path: Path) -> Rows:
    try:
        content = json.loads(_decode(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})", "fix the JSON syntax") from None
    if isinstance(content, dict):
        lists = [v for v in content.values() if isinstance(v, list)]
        if "data" in content and isinstance(content["data"], list):
            content = content["data"]
        elif len(lists) == 1:
            content = lists[0]
        elif all(isinstance(v, list) for v in content.values()) and content:
            # columnar: {"text": [...], "label": [...]}
            keys = list(content)
            content = [dict(zip(keys, values)) for values in zip(*content.values())]
    if not isinstance(content, list) or not all(isinstance(r, dict) for r in content):
        raise DataError(f"{path}: expected a list of records", "write [{\"text\": ..., \"label\": ...}, ...] or use JSONL")
    columns = list(dict.fromkeys(k for r in content for k in r))
    return Rows(content, list(range(1, len(content) + 1)), str(path), columns)


def _read_hub(dataset_id: str, *, config: str | None, split: str) -> Rows:
    from datasets import load_dataset

    try:
        splits = load_dataset(dataset_id, config)
    except Exception as exc:  # datasets raises many types: offline, not found, bad config
        raise DataError(
            f"cannot load Hugging Face dataset '{dataset_id}': {str(exc).splitlines()[0][:200]}",
            "use a local file path, or connect to the hub (unset HF_HUB_OFFLINE) so it can be downloaded once",
        ) from None
    names = HUB_SPLIT_NAMES.get(split, (split,))
    for name in names:
        if name in splits:
            table = splits[name]
            return Rows(table.to_list(), list(range(1, len(table) + 1)), f"{dataset_id}[{name}]", table.column_names)
    raise DataError(f"dataset '{dataset_id}' has no {split} split (found: {', '.join(splits)})")


def find_split_files(folder: Path) -> dict[str, str]:
    """train/dev/test files in a folder, by their stem."""
    found: dict[str, str] = {}
    for split, stems in SPLIT_FILE_STEMS.items():
        for stem in stems:
            matches = sorted(p for p in folder.iterdir() if p.is_file() and p.stem.lower() == stem
                             and p.suffix.lower() in {".csv", ".tsv", ".jsonl", ".json", ".parquet"})
            if matches:
                found[split] = str(matches[0])
                break
    if "train" not in found:
        raise DataError(f"no train file in {folder}", "name the training file train.csv (or .tsv/.jsonl/.json/.parquet)")
    return found


# ---------------------------------------------------------------------------------------------------- shaping


def data_sources(recipe: Recipe) -> dict[str, str]:
    """Where each split comes from: a file, a split of a folder, or a split of a hub dataset."""
    if recipe.data.train is None and recipe.label.input is not None:
        if not recipe.labelled_path.is_file():
            raise DataError(f"no teacher labels yet at {recipe.labelled_path}",
                            "run `slingshot label RECIPE` (or `slingshot run`, which labels first)")
        recipe.data.train = str(recipe.labelled_path.resolve())
    if recipe.data.train is None:
        raise DataError("the recipe names no training data", "set data.train to a file, a folder or a dataset id")
    train = recipe.resolve_path(recipe.data.train)
    assert train is not None
    sources: dict[str, str] = {}
    if Path(train).is_dir():
        sources.update(find_split_files(Path(train)))
    else:
        sources["train"] = train
        if not Path(train).exists() and not _looks_like_local(train):
            sources["eval"] = train + "#eval"  # same hub id, eval split when it has one
    for split in ("eval", "test", "gold"):
        value = getattr(recipe.data, split)
        if value is not None:
            sources[split] = recipe.resolve_path(value)  # type: ignore[assignment]
    return sources


def to_examples(rows: Rows, recipe: Recipe, *, need_label: bool = True,
                need_confidence: bool = False) -> tuple[list[dict[str, Any]], Skipped]:
    """Records to {text, text_pair?, label?, confidence?, row} examples; empty texts are skipped and counted."""
    columns = [recipe.data.text_column] + ([recipe.data.text_pair_column] if recipe.data.text_pair_column else [])
    if need_label:
        columns.append(recipe.data.label_column)
    if need_confidence and recipe.data.confidence_column not in rows.columns:
        raise DataError(
            f"{rows.source}: confidence column '{recipe.data.confidence_column}' not found; columns found: "
            f"{', '.join(rows.columns) or '(none)'}",
            "label with `slingshot label` (it writes one), set data.confidence_column, or drop "
            "data.min_confidence / data.weight_by_confidence",
        )
    missing = [c for c in columns if c not in rows.columns]
    if missing:
        field_name = {recipe.data.text_column: "data.text_column", recipe.data.label_column: "data.label_column"}
        which = ", ".join(f"'{m}'" for m in missing)
        raise DataError(
            f"{rows.source}: column {which} not found; columns found: {', '.join(rows.columns) or '(none)'}",
            f"set {field_name.get(missing[0], 'data.text_pair_column')} to one of the columns found",
        )
    examples, skipped = [], Skipped()
    for record, line in zip(rows.records, rows.lines):
        text = record.get(recipe.data.text_column)
        text = "" if text is None else str(text)
        pair = None
        if recipe.data.text_pair_column:
            pair = record.get(recipe.data.text_pair_column)
            pair = "" if pair is None else str(pair)
        if not text.strip() or (pair is not None and not pair.strip()):
            skipped.count += 1
            if len(skipped.examples) < 3:
                skipped.examples.append(f"{rows.source}:{line}")
            continue
        example: dict[str, Any] = {"text": text, "row": line}
        if pair is not None:
            example["text_pair"] = pair
        if need_label:
            label = record.get(recipe.data.label_column)
            if label is None or (isinstance(label, str) and not label.strip()):
                raise DataError(
                    f"{rows.source}:{line}: empty label in column '{recipe.data.label_column}'",
                    "label every row, or remove unlabelled rows",
                )
            example["label"] = label
        if need_confidence:
            example["confidence"] = _confidence(record.get(recipe.data.confidence_column), rows.source, line)
        examples.append(example)
    return examples, skipped


def _confidence(value: Any, source: str, line: int) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not 0 <= number <= 1:  # also catches NaN
        raise DataError(f"{source}:{line}: confidence {value!r} is not a number from 0 to 1",
                        "label with samples > 1 or an endpoint that returns log-probabilities, or fix that row")
    return number


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def infer_label_names(train_labels: list[Any], recipe: Recipe) -> list[str]:
    """Class names in index order: the recipe's, else the sorted labels found (numerically when all are integers)."""
    if recipe.data.label_names:
        return list(recipe.data.label_names)
    ints = [_as_int(v) for v in train_labels]
    if all(i is not None for i in ints):
        return [str(i) for i in sorted(set(ints))]  # type: ignore[type-var]
    return sorted({str(v).strip() for v in train_labels})


def encode_label(value: Any, names: list[str], recipe: Recipe) -> int | None:
    """Class index of a raw label, or None when it is not a known class."""
    text = str(value).strip()
    if text in names:
        return names.index(text)
    index = _as_int(value)
    if index is None:
        return None
    if recipe.data.label_names:  # integer labels index into the given names
        return index if 0 <= index < len(names) else None
    return names.index(str(index)) if str(index) in names else None  # 1.0 read from JSON is class "1"


def encode_regression(value: Any, source: str, line: int) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{source}:{line}: label {value!r} is not a number", "regression labels must be numbers") from None
    if not np.isfinite(number):
        raise DataError(f"{source}:{line}: label {value!r} is not finite", "remove NaN/inf labels")
    return number


def sample(examples: list[dict[str, Any]], limit: int | None, seed: int) -> list[dict[str, Any]]:
    """A seeded random subset of `limit` examples, kept in file order."""
    if limit is None or limit >= len(examples):
        return examples
    keep = np.sort(np.random.default_rng(seed).choice(len(examples), size=limit, replace=False))
    return [examples[i] for i in keep]


def stratified_split(examples: list[dict[str, Any]], fraction: float, seed: int, stratify: bool):
    """Hold out `fraction` of the examples, the same share of each class when stratify; seeded; file order kept."""
    rng = np.random.default_rng(seed)
    groups: dict[Any, list[int]] = {}
    for index, example in enumerate(examples):
        groups.setdefault(example["label"] if stratify else None, []).append(index)
    held_out: list[int] = []
    for indices in groups.values():
        count = round(len(indices) * fraction)
        if len(indices) >= 2:
            count = min(max(count, 1), len(indices) - 1)  # every class keeps a training example
        held_out += rng.permutation(indices)[:count].tolist()
    chosen = set(held_out)
    return [e for i, e in enumerate(examples) if i not in chosen], [examples[i] for i in sorted(chosen)]


def load_data(recipe: Recipe, *, strict: bool = True, splits: tuple[str, ...] = ALL_SPLITS) -> LoadedData:
    """Load every split the recipe names, map columns and labels, hold out eval when needed.

    strict=True (training) raises DataError for a single-class training set or an eval label unseen in training;
    strict=False (inspect) records them for the report instead.
    """
    if recipe.task == "extractive_qa":
        from slingshot.qa_data import load_qa_data

        return load_qa_data(recipe, splits=splits)
    if recipe.task in ("generation", "seq2seq"):  # both read conversations (chat_data)
        from slingshot.chat_data import load_chat_data

        return load_chat_data(recipe, splits=splits)
    sources = data_sources(recipe)
    raw: dict[str, list[dict[str, Any]]] = {}
    skipped: dict[str, Skipped] = {}
    shown_sources: dict[str, str] = {}
    teacher_options = recipe.data.min_confidence is not None or recipe.data.weight_by_confidence
    provenance: dict[str, Any] = {}
    for split in ALL_SPLITS:
        if split not in sources or (split != "train" and split not in splits):
            continue
        source = sources[split]
        if source.endswith("#eval"):
            try:
                rows = read_rows(source[: -len("#eval")], config=recipe.data.dataset_config, split="eval")
            except DataError:
                continue  # a hub dataset without an eval split: hold one out of train below
        else:
            rows = read_rows(source, config=recipe.data.dataset_config, split=split)
        raw[split], skipped[split] = to_examples(rows, recipe, need_confidence=split == "train" and teacher_options)
        shown_sources[split] = rows.source
        if split == "train":
            provenance = label_provenance(rows, recipe)
        if not raw[split]:
            raise DataError(f"{rows.source}: no usable rows (all {skipped[split].count} texts are empty)",
                            "check data.text_column points at the text")

    if "train" in raw and teacher_options:
        raw["train"] = _filter_and_weight(raw["train"], recipe, provenance)

    if "eval" not in raw:
        stratify = recipe.task == "classification"
        raw["train"], raw["eval"] = stratified_split(raw["train"], recipe.data.eval_fraction, recipe.data.seed, stratify)
        shown_sources["eval"] = f"{shown_sources['train']} (held out {recipe.data.eval_fraction:.0%}, seed {recipe.data.seed})"
        skipped["eval"] = Skipped()
        for example in raw["eval"]:
            example.pop("weight", None)  # evaluation scores every example alike
        if strict and not (raw["train"] and raw["eval"]):
            raise DataError(
                f"{shown_sources['train']}: {len(raw['train']) + len(raw['eval'])} usable rows are too few to hold out "
                f"an evaluation split (data.eval_fraction {recipe.data.eval_fraction})",
                "add rows, raise data.eval_fraction, or name an evaluation file in data.eval",
            )

    label_names = None
    unseen: dict[str, dict[str, int]] = {}
    if recipe.task == "classification":
        label_names = infer_label_names([e["label"] for e in raw["train"]], recipe)
        for split, examples in raw.items():
            for example in examples:
                index = encode_label(example["label"], label_names, recipe)
                if index is None:
                    if split == "train" and recipe.data.label_names:
                        raise DataError(
                            f"{shown_sources[split]}:{example['row']}: label {example['label']!r} is not in data.label_names "
                            f"({', '.join(label_names)})",
                            "add it to data.label_names or fix the row",
                        )
                    counts = unseen.setdefault(split, {})
                    counts[str(example["label"])] = counts.get(str(example["label"]), 0) + 1
                example["label"] = -1 if index is None else index
        present = {e["label"] for e in raw["train"]}
        if strict and len(present) < 2:
            only = label_names[next(iter(present))] if present else "none"
            raise DataError(
                f"{shown_sources['train']}: the training set has a single class ('{only}')",
                "a classifier needs examples of at least two classes; check data.label_column",
            )
        if strict and unseen:
            split, counts = next(iter(unseen.items()))
            label, count = next(iter(counts.items()))
            raise DataError(
                f"{shown_sources[split]}: label '{label}' ({count} rows) never occurs in training data "
                f"(training labels: {', '.join(label_names)})",
                "add training examples of that class, or list every class in data.label_names",
            )
    else:
        for split, examples in raw.items():
            for example in examples:
                example["label"] = encode_regression(example["label"], shown_sources[split], example["row"])

    limits = {"train": recipe.data.limit.train, "eval": recipe.data.limit.eval, "test": recipe.data.limit.test}
    datasets = {}
    for split, examples in raw.items():
        if split not in splits:
            continue
        examples = sample(examples, limits.get(split), recipe.data.seed)  # gold is never subsampled
        datasets[split] = Dataset.from_list(examples)
    if "gold" in raw:
        provenance["gold"] = {"source": shown_sources["gold"], "rows": len(raw["gold"])}
    return LoadedData(datasets, label_names, shown_sources, skipped, unseen, provenance)


def label_provenance(rows: Rows, recipe: Recipe) -> dict[str, Any]:
    """Where the training labels came from: the file, the teachers named in its `teacher` column, and the
    label_report.json that `slingshot label` wrote beside it (endpoint, prompt settings, cost)."""
    provenance: dict[str, Any] = {"source": rows.source, "rows": len(rows.records)}
    if "teacher" in rows.columns:
        teachers: dict[str, int] = {}
        for record in rows.records:
            name = str(record.get("teacher") or "(none)")
            teachers[name] = teachers.get(name, 0) + 1
        provenance["teachers"] = teachers
    report_path = Path(rows.source).parent / "label_report.json"
    if report_path.is_file():
        report = json.loads(report_path.read_text(encoding="utf-8"))
        provenance["label_report"] = str(report_path)
        provenance["labelling_cost_usd"] = report.get("cost_usd")
        provenance["teacher_settings"] = report.get("teacher")
    return provenance


def _filter_and_weight(examples: list[dict[str, Any]], recipe: Recipe, provenance: dict[str, Any]):
    """Drop teacher labels below data.min_confidence; weight the rest by confidence when asked. Recorded."""
    threshold = recipe.data.min_confidence
    kept = examples if threshold is None else [e for e in examples if e["confidence"] >= threshold]
    if not kept:
        raise DataError(f"no training row has a confidence of at least {threshold} (of {len(examples)})",
                        "lower data.min_confidence")
    if recipe.data.weight_by_confidence:
        for example in kept:
            example["weight"] = example["confidence"]
    provenance.update({"min_confidence": threshold, "rows_before_filter": len(examples), "rows_kept": len(kept),
                       "dropped_low_confidence": len(examples) - len(kept),
                       "weighted_by_confidence": recipe.data.weight_by_confidence,
                       "mean_confidence_kept": round(float(np.mean([e["confidence"] for e in kept])), 4)})
    return kept


def load_file(path: str, recipe: Recipe, label_names: list[str] | None, *, need_label: bool | None) -> tuple[Dataset, Skipped]:
    """One file scored or predicted by a finished run, with the run's columns and classes.

    need_label=None reads labels when the file has the label column (predict), True requires them (evaluate).
    """
    if recipe.task == "extractive_qa":
        from slingshot.qa_data import load_qa_file

        return load_qa_file(path, need_answers=need_label)
    if recipe.task in ("generation", "seq2seq"):  # both read conversations (chat_data)
        from slingshot.chat_data import load_chat_file

        return load_chat_file(path, recipe, need_answer=need_label)
    rows = read_rows(path)
    if need_label is None:
        need_label = recipe.data.label_column in rows.columns
    examples, skipped = to_examples(rows, recipe, need_label=need_label)
    if not examples:
        raise DataError(f"{rows.source}: no usable rows", "check the text column has text")
    if need_label:
        for example in examples:
            if recipe.task == "regression":
                example["label"] = encode_regression(example["label"], rows.source, example["row"])
                continue
            index = encode_label(example["label"], label_names or [], recipe)
            if index is None:
                raise DataError(
                    f"{rows.source}:{example['row']}: label {example['label']!r} is not one of the model's classes "
                    f"({', '.join(label_names or [])})",
                    "fix the label, or score with a run trained on that class",
                )
            example["label"] = index
    return Dataset.from_list(examples), skipped
