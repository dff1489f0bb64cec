"""The Python API: what the CLI does, for notebooks and scripts. Thin: every call is the function the CLI calls.

    import slingshot
    recipe = slingshot.load_recipe("examples/sst2/recipe.yaml", ["train.epochs=1"])
    run = slingshot.train(recipe)
    run.metrics["eval"]["accuracy"]
    run.predict(["a gripping, funny film"])
    run.compare(["majority", "embedding"])
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

from slingshot.recipe import CompareSection, Recipe, load_recipe, recipe_from_dict

__all__ = ["Run", "compare", "load", "load_recipe", "soup", "train"]


class Run:
    """A finished run directory: its metrics and summary, and what can be done with its model."""

    def __init__(self, path: str | Path):
        from slingshot.rundir import find_run

        self.path = find_run(str(path)).path

    def __repr__(self) -> str:
        return f"Run('{self.path}')"

    @cached_property
    def _loaded(self):
        from slingshot.evaluate import load_run

        return load_run(str(self.path))

    @property
    def metrics(self) -> dict[str, Any]:
        return json.loads((self.path / "metrics.json").read_text(encoding="utf-8"))

    @property
    def summary(self) -> dict[str, Any]:
        return json.loads((self.path / "summary.json").read_text(encoding="utf-8"))

    def predict(self, texts: list[str] | str, pairs: list[str] | None = None, backend: str = "torch") -> list[dict]:
        """Label and probabilities (or score) per text, as `slingshot predict` prints them."""
        from slingshot.evaluate import predict_texts

        return predict_texts(self._loaded, [texts] if isinstance(texts, str) else list(texts), pairs, backend)

    def answer(self, question: str, context: str, backend: str = "torch") -> dict:
        """The answer span of an extractive-QA run, as `slingshot predict --question --context` prints it."""
        from slingshot.evaluate import predict_answers

        return predict_answers(self._loaded, [question], [context], backend)[0]

    def evaluate(self, data: str | Path) -> dict[str, Any]:
        """Metrics of the model on any labelled file with the run's columns (as `slingshot evaluate --data`)."""
        from slingshot.evaluate import evaluate_file

        metrics, _, _ = evaluate_file(self._loaded, str(data))
        return metrics

    def compare(self, baselines: list[str], *, data: str | None = None, force: bool = False,
                **options: Any) -> dict[str, Any]:
        """`slingshot compare`: options are fields of the recipe's compare section (limit, llm, shots, ...)."""
        return compare(self, baselines, data=data, force=force, **options)

    def export_onnx(self, int8: bool = False, overwrite: bool = False) -> dict[str, Any]:
        from slingshot.onnx_export import export_onnx

        return export_onnx(str(self.path), int8=int8, overwrite=overwrite)

    def report(self) -> Path:
        from slingshot.report import build_report

        return build_report(str(self.path))


def load(path: str | Path) -> Run:
    """A finished run by its directory."""
    return Run(path)


def train(recipe: Recipe | str | Path | dict, overrides: list[str] | None = None, *, overwrite: bool = False,
          resume: bool = False, show_progress: bool = True) -> Run:
    """Fine-tune as `slingshot train` does; a recipe object, a YAML path, or a dict. Returns the finished run.

    Raises:
        SlingshotError: a fault in the recipe, data, model or run folder (message + hint), before training.
        KeyboardInterrupt-safe: an interrupted run is checkpointed; continue with resume=True.
    """
    from slingshot.recipe import apply_overrides
    from slingshot.train import train as run_training

    if isinstance(recipe, (str, Path)):
        recipe = load_recipe(recipe, overrides or [])
    elif isinstance(recipe, dict):
        recipe = recipe_from_dict(apply_overrides(recipe, overrides or []))
    elif overrides:
        recipe = recipe_from_dict(apply_overrides(recipe.model_dump(mode="json"), overrides), recipe.base_dir)
    result = run_training(recipe, overwrite=overwrite, resume=resume, show_progress=show_progress)
    return Run(result.run.path)


def compare(run: Run | str | Path, baselines: list[str], *, data: str | None = None, force: bool = False,
            **options: Any) -> dict[str, Any]:
    """Compare a run with baselines; returns the comparison report (also written into the run)."""
    from slingshot.compare import compare_run

    path = run.path if isinstance(run, Run) else Path(run)
    section = CompareSection(**{**options, "baselines": baselines})
    return compare_run(str(path), section, data_path=data, force=force).report


def soup(runs: list[Run | str | Path], name: str | None = None, *, root: str | Path | None = None,
         weights: list[float] | None = None, greedy: bool = False, overwrite: bool = False) -> Run:
    """Average the weights of runs fine-tuned from the same base model into a new, scored run (`slingshot soup`);
    `greedy` keeps only the runs that do not lower the eval score (`slingshot soup --greedy`)."""
    from slingshot.model_soup import soup as make_soup

    paths = [run.path if isinstance(run, Run) else Path(run) for run in runs]
    return Run(make_soup(paths, name, root=root, weights=weights, greedy=greedy, overwrite=overwrite).run.path)
