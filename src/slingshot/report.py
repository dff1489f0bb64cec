"""`slingshot report RUN`: one self-contained report.html (images inline, no network) to read instead of logs.

A section is a function (RunArtefacts) -> html string or None (None: nothing to show for this run). Adding a
section is adding one function to SECTIONS.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from slingshot.rundir import RunDir, find_run


@dataclass
class RunArtefacts:
    """Everything a finished run wrote, read once; missing files are empty."""

    run: RunDir
    recipe: dict[str, Any]
    summary: dict[str, Any]
    metrics: dict[str, Any]
    log: list[dict[str, Any]]
    predictions: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)  # comparison, inspection, curve, similarity image

    @staticmethod
    def read(run: RunDir) -> RunArtefacts:
        def json_file(path: Path) -> Any:
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

        def jsonl(path: Path) -> list[dict[str, Any]]:
            if not path.is_file():
                return []
            return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

        recipe = yaml.safe_load(run.recipe.read_text(encoding="utf-8")) if run.recipe.is_file() else {}
        extra = {name: json_file(run.path / f"{name}.json") for name in ("comparison", "inspection", "curve")}
        return RunArtefacts(run, recipe or {}, json_file(run.summary), json_file(run.metrics), jsonl(run.train_log),
                            jsonl(run.predictions), {k: v for k, v in extra.items() if v})


# ---- helpers --------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    head = f"<thead><tr>{head}</tr></thead>" if any(header) else ""  # key-value tables need no header row
    body = "".join("<tr>" + "".join(f'<td class="{"num" if i >= numeric_from else ""}">{_e(v)}</td>'
                                    for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _figure(draw: Callable[[Any], None], width: float = 6.4, height: float = 3.4, alt: str = "chart") -> str:
    """A matplotlib drawing as an inline PNG <img>. Uses a bare Figure (Agg canvas): no pyplot, no display."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    draw(figure)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{encoded}">'


def _image_file(path: Path, alt: str) -> str | None:
    if not path.is_file():
        return None
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# ---- sections -----------------------------------------------------------------------------------------------


def summary_section(a: RunArtefacts) -> str | None:
    s = a.summary
    if not s:
        return None
    eval_metrics = a.metrics.get("eval", {})
    headline = ", ".join(f"{k} {_fmt(v)}" for k, v in eval_metrics.items() if isinstance(v, float) and k != "loss")
    rows = [["task", s.get("task")], ["model", s.get("model")], ["method", s.get("method")],
            ["eval", headline], ["train examples", _fmt(s.get("train_examples", ""))],
            ["wall time", f"{s.get('wall_time_s', 0):,.0f} s"], ["real tokens/s", _fmt(s.get("real_tokens_per_s", ""))],
            ["padding", f"{s.get('padding_fraction', 0):.1%}"], ["peak RSS", f"{s.get('peak_rss_mb', 0):,.0f} MB"],
            ["precision / threads", f"{s.get('precision')} / {s.get('threads')}"],
            ["estimated cost", f"{s.get('estimated_cost_usd', 0):.4f} USD at {s.get('price_per_hour_usd', 0)} USD/h"]]
    return "<h2>Summary</h2>" + _table(["", ""], rows, numeric_from=9)


def data_section(a: RunArtefacts) -> str | None:
    data = a.recipe.get("data", {})
    if not data:
        return None
    rows = [[key, data.get(key)] for key in ("train", "eval", "test", "text_column", "label_column", "label_names")
            if data.get(key) is not None]
    skipped = a.summary.get("skipped_empty_texts") or {}
    if skipped:
        rows.append(["skipped empty texts", ", ".join(f"{k}: {v}" for k, v in skipped.items())])
    recipe = html.escape(yaml.safe_dump(a.recipe, sort_keys=False, allow_unicode=True))
    return ("<h2>Data and recipe</h2>" + _table(["", ""], rows, numeric_from=9)
            + f"<details><summary>resolved recipe</summary><pre>{recipe}</pre></details>")


def inspection_section(a: RunArtefacts) -> str | None:
    report = a.extra.get("inspection")
    if not report or not report.get("problems"):
        return None
    rows = [[p.get("severity"), p.get("split"), p.get("check"), p.get("count"), p.get("example")]
            for p in report["problems"]]
    return "<h2>Data checks</h2>" + _table(["severity", "split", "check", "count", "example"], rows, numeric_from=3)


def curves_section(a: RunArtefacts) -> str | None:
    steps = [line for line in a.log if "loss" in line and "eval" not in line]
    evals = [line for line in a.log if "eval" in line]
    if not steps:
        return None
    metric = next((k for k in ("accuracy", "f1", "rmse", "macro_f1") if evals and k in evals[0]["eval"]), None)
    memory = [line for line in steps if "rss_mb" in line]  # logs written before memory was logged have none
    panels = 3 if memory else 2

    def draw(figure):
        loss, lr = figure.add_subplot(1, panels, 1), figure.add_subplot(1, panels, 2)
        loss.plot([s["step"] for s in steps], [s["loss"] for s in steps], label="train loss", color="#1f77b4")
        if evals and "loss" in evals[0]["eval"]:
            loss.plot([e["step"] for e in evals], [e["eval"]["loss"] for e in evals], "o-", label="eval loss",
                      color="#ff7f0e")
        loss.set_xlabel("optimizer step")
        loss.legend()
        if metric:
            lr.plot([e["step"] for e in evals], [e["eval"][metric] for e in evals], "o-", color="#2ca02c")
            lr.set_ylabel(f"eval {metric}")
            twin = lr.twinx()
            twin.plot([s["step"] for s in steps], [s["lr"] for s in steps], color="#999999", linewidth=0.8)
            twin.set_ylabel("learning rate", color="#777777")
        else:
            lr.plot([s["step"] for s in steps], [s["lr"] for s in steps], color="#999999")
            lr.set_ylabel("learning rate")
        lr.set_xlabel("optimizer step")
        if memory:  # resident memory as the run went: where its peak came from
            rss = figure.add_subplot(1, panels, 3)
            rss.plot([m["step"] for m in memory], [m["rss_mb"] for m in memory], color="#9467bd", label="RSS")
            highest = max(m["rss_mb"] for m in memory)
            peak = a.summary.get("peak_rss_mb")
            if isinstance(peak, (int, float)):
                rss.axhline(peak, color="#9467bd", linestyle="--", linewidth=0.8, label=f"run's peak {peak:,.0f} MB")
                highest = max(highest, peak)
            rss.set_ylim(0, highest * 1.15)
            rss.set_ylabel("resident memory (MB)")
            rss.set_xlabel("optimizer step")
            rss.legend(loc="lower right")

    best = a.metrics.get("best_step")
    note = f"<p>Best model: step {best} ({_e(a.metrics.get('best_metric'))}).</p>" if best is not None else ""
    alt = "training curves and memory" if memory else "training curves"
    return "<h2>Training curves</h2>" + _figure(draw, 13.5 if memory else 9.5, 3.4, alt) + note


def metrics_section(a: RunArtefacts) -> str | None:
    parts = []
    for split in ("eval", "test"):
        metrics = a.metrics.get(split)
        if not metrics:
            continue
        scalars = [[k, _fmt(v)] for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        parts.append(f"<h3>{split}</h3>" + _table(["metric", "value"], scalars))
        per_class = metrics.get("per_class")
        if per_class:
            rows = [[name, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", v["support"]]
                    for name, v in per_class.items()]
            parts.append(_table(["class", "precision", "recall", "F1", "support"], rows))
        matrix = metrics.get("confusion_matrix")
        if matrix:
            parts.append(_confusion(np.array(matrix), metrics["labels"], split))
    return "<h2>Metrics</h2>" + "".join(parts) if parts else None


def _confusion(matrix: np.ndarray, labels: list[str], split: str) -> str:
    def draw(figure):
        axes = figure.add_subplot(1, 1, 1)
        axes.imshow(matrix, cmap="Blues")
        axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        axes.set_yticks(range(len(labels)), labels)
        axes.set_xlabel("predicted")
        axes.set_ylabel("gold")
        for (row, column), count in np.ndenumerate(matrix):
            axes.text(column, row, str(count), ha="center", va="center",
                      color="white" if count > matrix.max() / 2 else "black")

    size = 2.2 + 0.5 * len(labels)
    return _figure(draw, size, size, f"{split} confusion matrix")


def mistakes_section(a: RunArtefacts, count: int = 15) -> str | None:
    wrong = [p for p in a.predictions if "gold" in p and "probability" in p and p["gold"] != p["predicted"]]
    if not wrong:
        return None
    wrong.sort(key=lambda p: -p["probability"])
    rows = [[p.get("text", "")[:300], p["gold"], p["predicted"], f"{p['probability']:.3f}"] for p in wrong[:count]]
    return (f"<h2>Most confident mistakes ({len(wrong)} wrong of {len(a.predictions)})</h2>"
            + _table(["text", "gold", "predicted", "confidence"], rows, numeric_from=3))


def reliability_section(a: RunArtefacts, bins: int = 10) -> str | None:
    scored = [p for p in a.predictions if "gold" in p and "probability" in p]
    if len(scored) < 20:
        return None
    confidence = np.array([p["probability"] for p in scored])
    correct = np.array([p["gold"] == p["predicted"] for p in scored], dtype=float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges) - 1, 0, bins - 1)
    centers, accuracy, counts = [], [], []
    for b in range(bins):
        mask = which == b
        if mask.any():
            centers.append(confidence[mask].mean())
            accuracy.append(correct[mask].mean())
            counts.append(int(mask.sum()))
    # expected calibration error: the count-weighted gap between confidence and accuracy per bin
    ece = float(sum(c * abs(x - y) for c, x, y in zip(counts, centers, accuracy)) / len(scored))

    def draw(figure):
        axes = figure.add_subplot(1, 1, 1)
        axes.plot([0, 1], [0, 1], "--", color="#999999", label="perfect calibration")
        axes.plot(centers, accuracy, "o-", color="#d62728", label="this model")
        axes.set_xlabel("confidence")
        axes.set_ylabel("accuracy")
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1.02)
        axes.legend()

    return (f"<h2>Reliability</h2><p>Expected calibration error {ece:.3f} over {len(scored)} eval examples.</p>"
            + _figure(draw, 4.2, 3.6, "reliability diagram"))


def comparison_section(a: RunArtefacts) -> str | None:
    report = a.extra.get("comparison")
    if not report:
        return None
    primary = report["primary_metric"]
    rows = []
    for row in report["systems"]:
        m = row["metrics"][primary]
        latency = row["latency_ms"]["p50_ms"]
        cost = row["cost_per_1k_usd"]
        rows.append([row["name"], f"{m['value']:.4f} [{m['ci_low']:.4f}, {m['ci_high']:.4f}]", row["invalid_answers"],
                     "" if latency is None else f"{latency:.1f}", "" if cost is None else f"{cost:.6f}"])
    for item in report.get("published", []):
        rows.append([f"{item['name']} (published: {item['source']})", f"{item['value']:.4f}", "", "", ""])
    verdicts = "".join(f"<li>{_e(test['sentence'])}</li>" for test in report["tests"])
    return (f"<h2>Comparison ({report['examples']} examples)</h2>"
            + _table(["system", f"{primary} (95% CI)", "invalid", "p50 ms", "USD per 1k"], rows)
            + f"<ul>{verdicts}</ul>")


def similarity_section(a: RunArtefacts) -> str | None:
    image = _image_file(a.run.path / "similarity_eval.png", "answer similarity histogram")
    similarity = a.metrics.get("eval", {}).get("similarity")
    if image is None and not similarity:
        return None
    text = ""
    if isinstance(similarity, dict):
        text = _table(["", ""], [[k, _fmt(v)] for k, v in similarity.items() if isinstance(v, (int, float))])
    return "<h2>Answer similarity</h2>" + text + (image or "")


def soup_section(a: RunArtefacts) -> str | None:
    """What a soup (`slingshot soup`) averaged: its runs and their shares, and a greedy soup's search."""
    members = a.summary.get("soup_of")
    if not members:
        return None
    rows = [[m.get("run"), f"{m.get('weight', 0):.3f}", f"{m.get('train_time_s') or 0:,.0f} s"] for m in members]
    parts = ["<h2>Soup</h2>", f"<p>The weights of {len(members)} runs, averaged (<code>slingshot soup</code>).</p>",
             _table(["run", "share", "training time"], rows, numeric_from=1)]
    search = a.metrics.get("greedy")
    if search:
        metric = search["metric"]
        steps = {step["added"]: step for step in search["steps"]}
        rows = []
        for entry in search["runs"]:
            step = steps.get(entry["run"])
            verdict = "first (best alone)" if step is None else ("kept" if step["kept"] else "left out")
            rows.append([entry["run"], _fmt(entry[metric]), "" if step is None else _fmt(step[metric]), verdict])
        parts += [f"<p>Greedy soup: best run first, each next run kept only if the soup's eval {_e(metric)} did not "
                  "get worse (so the eval split picked it; test and gold did not).</p>",
                  _table(["run", f"{metric} alone", f"{metric} with it", ""], rows, numeric_from=1)]
    return "".join(parts)


def learning_curve_section(a: RunArtefacts) -> str | None:
    image = _image_file(a.run.path / "curve.png", "learning curve")
    return "<h2>Learning curve</h2>" + image if image else None


SECTIONS: list[Callable[[RunArtefacts], str | None]] = [
    summary_section, data_section, inspection_section, soup_section, curves_section, metrics_section,
    mistakes_section,
    reliability_section, comparison_section, similarity_section, learning_curve_section,
]

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}td,th{border:1px solid #ddd;padding:.3em .6em;
text-align:left;vertical-align:top}td.num{text-align:right;font-variant-numeric:tabular-nums}th{background:#f5f5f5}
img{max-width:100%;display:block;margin:.6em 0}pre{background:#f8f8f8;padding:.8em;overflow:auto;font-size:.85em}
.meta{color:#666}
"""


def build_report(run_path: str) -> Path:
    """Write <run>/report.html and return its path. Raises RunDirError when the run is not finished."""
    run = find_run(run_path)
    artefacts = RunArtefacts.read(run)
    body = "".join(section for section in (make(artefacts) for make in SECTIONS) if section)
    name = artefacts.recipe.get("name") or run.path.name
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Slingshot run: {_e(name)}"
            f"</title><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{STYLE}</style>"
            f"</head><body><h1>{_e(name)}</h1><p class=\"meta\">{_e(run.path)}</p>{body}</body></html>\n")
    target = run.path / "report.html"
    temporary = target.with_suffix(".partial")
    temporary.write_text(page, encoding="utf-8")
    temporary.replace(target)
    return target
