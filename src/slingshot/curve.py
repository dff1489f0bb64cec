"""`slingshot curve`: quality against the number of labelled examples, so a team stops labelling at the right point.

Order of work: load the recipe's data once; write the eval split once (every point scores on the same examples);
for each size (smallest first), method and seed, draw the seeded stratified sample, train a normal run on it,
and append the finished point to points.jsonl; then summarise (mean ± std per point), find the smallest size
within `tolerance` of the reference, and write curve.json, curve.md and curve.png.

Samples are nested: a seed fixes one ordering of the training set, and every size takes a prefix of it, so the
examples behind 64 per class are inside those behind 256. A curve then shows the effect of more data, not of a
luckier draw. An interrupted sweep resumes: finished points are read back from points.jsonl, a point whose run
finished but was not yet recorded is recorded without training, and an interrupted point resumes its checkpoint.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slingshot.errors import RecipeError, RunDirError
from slingshot.recipe import Recipe, recipe_from_dict
from slingshot.rundir import RunDir, append_jsonl, read_json, write_json, write_jsonl


@dataclass(frozen=True)
class Size:
    """One point on the size axis: `per_class` examples of each class, `total` examples, or all of them."""

    label: str
    per_class: int | None = None
    total: int | None = None

    def expected_count(self, class_counts: list[int]) -> int:
        if self.per_class is not None:
            return sum(min(self.per_class, count) for count in class_counts)
        return min(self.total, sum(class_counts)) if self.total is not None else sum(class_counts)


def parse_sizes(values: list[int | str], per_class_up_to: int) -> list[Size]:
    """'8', '1000', 'all' to Sizes; up to `per_class_up_to` a number is per class, beyond it a total.

    Raises RecipeError for a size that is neither a positive integer nor 'all', or a repeated size.
    """
    sizes: list[Size] = []
    for value in values:
        text = str(value).strip().lower()
        if text == "all":
            sizes.append(Size("all"))
        elif text.isdigit() and int(text) > 0:
            number = int(text)
            sizes.append(Size(text, per_class=number) if number <= per_class_up_to else Size(text, total=number))
        else:
            raise RecipeError(f"curve size '{value}' is not a positive whole number or 'all'",
                              "write sizes like --sizes 8,16,32,64,256,1000,all")
    labels = [size.label for size in sizes]
    if len(set(labels)) != len(labels):
        raise RecipeError(f"curve sizes repeat a size: {', '.join(labels)}", "list each size once")
    return sizes


def sort_sizes(sizes: list[Size], class_counts: list[int]) -> list[Size]:
    """Sizes in growing order of examples: the order the sweep trains them in, and the order samples nest in
    (100 in all comes before 64 per class of 3 classes, and is inside it)."""
    return sorted(sizes, key=lambda size: (size.expected_count(class_counts), size.total is not None))


def stratified_order(labels, seed: int, per_class_up_to: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded ordering of the training set whose prefixes are the curve's samples, and each example's rank.

    rank[i] is example i's position in a seeded permutation of its class: the per-class sample of size k is
    {rank < k}. The order puts every example with rank < per_class_up_to first, by rank (round robin over
    classes, so any prefix is balanced), then the rest spread evenly over classes in proportion to what each has
    left (key (rank - up_to + 0.5) / left), so a total sample is balanced up to `per_class_up_to` per class and
    stratified beyond it. Ties are broken by a seeded random draw.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    rank = np.empty(len(labels), dtype=np.int64)
    key = np.empty(len(labels), dtype=np.float64)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        rank[members] = np.arange(len(members))
        left = max(len(members) - per_class_up_to, 1)
        key[members] = np.where(rank[members] < per_class_up_to, rank[members],
                                per_class_up_to + (rank[members] - per_class_up_to + 0.5) / left)
    tie_break = rng.random(len(labels))
    order = np.lexsort((tie_break, key))
    return order, rank


def sample_indices(order: np.ndarray, rank: np.ndarray, size: Size) -> np.ndarray:
    """The training-set indices of one size's sample (sorted), from `stratified_order`."""
    if size.per_class is not None:
        return np.flatnonzero(rank < size.per_class)
    chosen = order if size.total is None else order[: size.total]
    return np.sort(chosen)


# ---------------------------------------------------------------------------------------------------- the sweep


@dataclass
class CurveResult:
    folder: Path
    points: list[dict[str, Any]]
    summary: dict[str, Any] | None  # None when interrupted
    interrupted: bool = False


def curve_folder(recipe: Recipe, out: str | Path | None) -> Path:
    return Path(out) if out is not None else Path(recipe.output.dir) / f"{recipe.name or 'run'}-curve"


def run_curve(recipe: Recipe, *, out: str | Path | None = None, overwrite: bool = False,
              on_event: Callable[[str, dict[str, Any]], None] = lambda kind, info: None) -> CurveResult:
    """Train every (size, method, seed) point of `recipe.curve` and summarise; resumes a sweep in the same folder.

    on_event(kind, info) reports progress: "plan" {total, done}, "start" {point}, "done" {point record}.
    Raises RecipeError for bad sizes or a regression recipe with method fewshot, RunDirError when the folder holds
    a sweep of another recipe (pass overwrite to start over).
    """
    from slingshot.data import load_data
    from slingshot.train import train

    settings = recipe.curve
    if "fewshot" in settings.methods and recipe.task != "classification":
        raise RecipeError("curve method fewshot is for classification", "use --methods full,lora for regression")
    folder = curve_folder(recipe, out)
    data = load_data(recipe, splits=("train", "eval"))
    train_split, eval_split = data.splits["train"], data.splits["eval"]
    labels = train_split["label"] if recipe.task == "classification" else [0] * len(train_split)
    class_counts = np.unique(labels, return_counts=True)[1].tolist()
    sizes = sort_sizes(parse_sizes(settings.sizes, settings.per_class_up_to), class_counts)

    identity = {"recipe": _point_independent(recipe), "train_rows": len(train_split), "eval_rows": len(eval_split)}
    _open_folder(folder, identity, overwrite)
    eval_file = folder / "data" / "eval.jsonl"
    if not eval_file.is_file():
        write_jsonl(eval_file, _rows(eval_split, data.label_names))

    plan = []
    for size in sizes:
        seeds = settings.total_size_seeds if size.per_class is None and settings.total_size_seeds else settings.seeds
        for method in settings.methods:
            plan += [(size, method, seed) for seed in range(seeds)]
    points_file = folder / "points.jsonl"
    recorded = [json.loads(line) for line in points_file.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if points_file.is_file() else []
    done = {(p["size"], p["method"], p["seed"]) for p in recorded}
    on_event("plan", {"total": len(plan), "done": sum((s.label, m, seed) in done for s, m, seed in plan)})

    orders: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for size, method, seed in plan:
        if (size.label, method, seed) in done:
            continue
        if seed not in orders:
            orders[seed] = stratified_order(labels, seed, settings.per_class_up_to)
        indices = sample_indices(*orders[seed], size)
        point = {"size": size.label, "per_class": size.per_class is not None, "method": method, "seed": seed,
                 "examples": int(len(indices))}
        on_event("start", point)
        run = RunDir(folder / "runs" / f"{method}-{size.label}-seed{seed}")
        if not run.finished:
            sample_file = folder / "data" / f"train-{size.label}-seed{seed}.jsonl"
            if not sample_file.is_file():
                write_jsonl(sample_file, _rows(train_split.select(indices), data.label_names))
            point_recipe = _point_recipe(recipe, run, method, seed, sample_file, eval_file, data.label_names)
            result = train(point_recipe, overwrite=not run.resumable, resume=run.resumable, show_progress=False)
            if result.interrupted:
                return CurveResult(folder, recorded, None, interrupted=True)
        record = {**point, **_point_figures(run, recipe)}
        append_jsonl(points_file, record)
        recorded.append(record)
        if not settings.keep_models:
            shutil.rmtree(run.model, ignore_errors=True)
        on_event("done", record)

    wanted = {(s.label, m, seed) for s, m, seed in plan}
    points = [p for p in recorded if (p["size"], p["method"], p["seed"]) in wanted]
    summary = summarise(points, sizes, settings.methods, recipe, reference_from(settings.baseline, recipe))
    write_json(folder / "curve.json", summary)
    (folder / "curve.md").write_text(render_markdown(summary), encoding="utf-8")
    plot_curve(summary, folder / "curve.png")
    return CurveResult(folder, points, summary)


def _point_independent(recipe: Recipe) -> dict[str, Any]:
    """What every point shares: the recipe without the settings a point or the sweep's own plan overrides."""
    raw = recipe.model_dump(mode="json")
    for key in ("name", "curve", "compare"):
        raw.pop(key, None)
    raw["output"].pop("dir", None)
    raw["train"].pop("method", None)
    raw["train"].pop("seed", None)
    return raw


def _open_folder(folder: Path, identity: dict[str, Any], overwrite: bool) -> None:
    """A sweep folder holds one recipe's points; never mix two recipes, never delete finished points silently."""
    marker = folder / "sweep.json"
    if marker.is_file() and read_json(marker) != json.loads(json.dumps(identity)):
        if not overwrite:
            raise RunDirError(f"{folder} holds a curve of another recipe or data",
                              "pass --overwrite to start that curve over, or --out another folder")
        shutil.rmtree(folder)
    elif overwrite and folder.exists():
        shutil.rmtree(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    write_json(marker, identity)


def _rows(dataset, label_names: list[str] | None) -> list[dict[str, Any]]:
    rows = []
    pairs = dataset["text_pair"] if "text_pair" in dataset.column_names else None
    for i, (text, label) in enumerate(zip(dataset["text"], dataset["label"])):
        row: dict[str, Any] = {"text": text, "label": label_names[label] if label_names else label}
        if pairs is not None:
            row["text_pair"] = pairs[i]
        rows.append(row)
    return rows


def _point_recipe(recipe: Recipe, run: RunDir, method: str, seed: int, sample_file: Path, eval_file: Path,
                  label_names: list[str] | None) -> Recipe:
    raw = recipe.model_dump(mode="json")
    raw["name"] = run.path.name
    raw["output"]["dir"] = str(run.path.parent)
    raw["train"]["method"] = method
    raw["train"]["seed"] = seed
    raw["data"].update({
        "train": str(sample_file), "eval": str(eval_file), "test": None, "text_column": "text",
        "text_pair_column": "text_pair" if recipe.data.text_pair_column else None, "label_column": "label",
        "label_names": label_names, "limit": {}, "seed": seed,
    })
    raw["compare"]["baselines"] = []
    return recipe_from_dict(raw, source=f"curve point {run.path.name}")


def _point_figures(run: RunDir, recipe: Recipe) -> dict[str, Any]:
    metrics = read_json(run.metrics)["eval"]
    summary = read_json(run.summary)
    figures = {name: metrics[name] for name in ("accuracy", "macro_f1", "rmse", "mae") if name in metrics}
    figures["metric"] = metrics[recipe.best_metric]
    figures["train_time_s"] = summary["train_time_s"]
    figures["wall_time_s"] = summary["wall_time_s"]
    return figures


# ---------------------------------------------------------------------------------------------------- summary


def reference_from(baseline: str | None, recipe: Recipe) -> dict[str, Any] | None:
    """The score 'enough data' is measured against, when not the best point: a number, or a compare result.

    Raises RecipeError when the file is missing or has no such system.
    """
    if baseline is None:
        return None
    try:
        value = float(baseline)
        return {"name": "baseline", "value": value / 100 if value > 1 else value}
    except ValueError:
        pass
    path_text, _, wanted = baseline.partition("#")
    path = Path(path_text)
    if path.is_dir():
        path = path / "comparison.json"
    if not path.is_file():
        raise RecipeError(f"curve baseline {baseline}: no comparison.json there",
                          "give a number, or the comparison.json that `slingshot compare` wrote")
    report = read_json(path)
    metric = recipe.best_metric
    candidates = [row for row in report["systems"] if row["kind"] != "fine-tuned" and metric in row["metrics"]]
    if wanted:
        candidates = [row for row in candidates if wanted.lower() in (row["kind"] + " " + row["name"]).lower()]
    if not candidates:
        raise RecipeError(f"curve baseline {baseline}: no baseline system{' matching ' + wanted if wanted else ''} "
                          f"with {metric} in {path}",
                          "name a system of that comparison after #, e.g. runs/sst2/comparison.json#llm")
    pick = max if recipe.metric_greater_is_better else min
    best = pick(candidates, key=lambda row: row["metrics"][metric]["value"])
    return {"name": best["name"], "value": best["metrics"][metric]["value"], "source": str(path)}


def summarise(points: list[dict[str, Any]], sizes: list[Size], methods: list[str], recipe: Recipe,
              baseline: dict[str, Any] | None) -> dict[str, Any]:
    """Mean ± standard deviation per (method, size); the smallest size within tolerance of the reference."""
    metric = recipe.best_metric
    higher_is_better = recipe.metric_greater_is_better
    rows = []
    for method in methods:
        for size in sizes:
            group = [p for p in points if p["method"] == method and p["size"] == size.label]
            if not group:
                continue
            values = np.array([p["metric"] for p in group], dtype=float)
            rows.append({
                "method": method, "size": size.label, "per_class": size.per_class is not None,
                "examples": round(float(np.mean([p["examples"] for p in group])), 1), "seeds": len(group),
                "mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "train_time_s": round(float(np.mean([p["train_time_s"] for p in group])), 2),
            })
    if not rows:
        raise RunDirError("the curve has no finished points", "run the sweep first")
    best = (max if higher_is_better else min)(rows, key=lambda row: row["mean"])
    reference = baseline or {"name": f"best point ({best['method']} at {best['size']})", "value": best["mean"]}
    tolerance = recipe.curve.tolerance
    enough: dict[str, dict[str, Any] | None] = {}
    for method in methods:
        close = [row for row in rows if row["method"] == method and (
            row["mean"] >= reference["value"] - tolerance if higher_is_better
            else row["mean"] <= reference["value"] + tolerance)]
        enough[method] = close[0] if close else None  # rows are in growing size order
    return {"metric": metric, "higher_is_better": higher_is_better, "tolerance": tolerance, "reference": reference,
            "best": {"method": best["method"], "size": best["size"], "mean": best["mean"]}, "enough": enough,
            "rows": rows}


def _size_text(row: dict[str, Any]) -> str:
    return f"{row['size']}/class" if row["per_class"] else row["size"]


def render_markdown(summary: dict[str, Any]) -> str:
    metric, reference = summary["metric"], summary["reference"]
    lines = [f"# Learning curve ({metric})", "",
             "| method | size | examples | seeds | mean | std | train time (s) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in summary["rows"]:
        lines.append(f"| {row['method']} | {_size_text(row)} | {row['examples']:g} | {row['seeds']} | "
                     f"{row['mean']:.4f} | {row['std']:.4f} | {row['train_time_s']:.1f} |")
    lines += ["", f"Reference: {reference['name']} = {reference['value']:.4f}; tolerance {summary['tolerance']:g}.", ""]
    for method, row in summary["enough"].items():
        verdict = (f"**{_size_text(row)}** ({row['examples']:g} examples, {row['mean']:.4f}) is enough" if row
                   else "no size comes within the tolerance")
        lines.append(f"- {method}: {verdict}")
    return "\n".join(lines) + "\n"


def plot_curve(summary: dict[str, Any], path: Path) -> None:
    """The curves (mean with a ±1 std band) against examples on a log axis, and the reference line."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a server; must precede pyplot
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    for method in dict.fromkeys(row["method"] for row in summary["rows"]):
        rows = [row for row in summary["rows"] if row["method"] == method]
        x = np.array([row["examples"] for row in rows])
        mean = np.array([row["mean"] for row in rows])
        std = np.array([row["std"] for row in rows])
        axes.plot(x, mean, marker="o", label=method)
        axes.fill_between(x, mean - std, mean + std, alpha=0.2)
    reference = summary["reference"]
    axes.axhline(reference["value"], color="grey", linestyle="--", linewidth=1, label=reference["name"])
    axes.set_xscale("log")
    axes.set_xlabel("training examples (log scale)")
    axes.set_ylabel(summary["metric"])
    axes.set_title("learning curve: mean ± std over seeds")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
