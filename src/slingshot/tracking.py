"""Experiment trackers (TensorBoard, MLflow, Weights & Biases) through Accelerate's tracker API.

Off unless the recipe lists them under `track.to`. Checked before anything is loaded, so a missing package is
one clear error naming the install command, not a crash an hour into training.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from slingshot.errors import RecipeError
from slingshot.recipe import Recipe

# tracker -> (module that must import, extra that installs it)
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"),
                    "wandb": ("wandb", "wandb")}


def check_trackers(recipe: Recipe) -> None:
    """Raise RecipeError for a tracker whose package is not installed."""
    for name in recipe.track.to:
        module, extra = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise RecipeError(f"track.to lists {name}, but the {module} package is not installed",
                              f"pip install 'slingshot-lm[{extra}]', or remove {name} from track.to")


def tracking_dir(recipe: Recipe) -> Path:
    return Path(recipe.track.dir or Path(recipe.output.dir) / "tracking").resolve()


def start_trackers(accelerator, recipe: Recipe, run_name: str) -> bool:
    """Start the recipe's trackers with the resolved recipe as their configuration; False when none."""
    if not recipe.track.to:
        return False
    folder = tracking_dir(recipe)
    folder.mkdir(parents=True, exist_ok=True)
    if "mlflow" in recipe.track.to and "MLFLOW_TRACKING_URI" not in os.environ:
        import mlflow

        # MLflow 3 keeps its plain-file store in maintenance mode and refuses it unless this is set; it is the
        # store that needs no server and no database, which is what a local default should be.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri((folder / "mlruns").as_uri())
    project = recipe.track.project or run_name
    accelerator.init_trackers(project, config=flat_config(recipe.model_dump(mode="json")),
                              init_kwargs={"mlflow": {"run_name": run_name}, "wandb": {"name": run_name}})
    return True


def flat_config(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested recipe as flat `section.key` scalars: what every tracker's hyperparameter table accepts."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[name] = "null" if value is None else value
        else:
            flat[name] = str(value)
    return flat


def numeric(prefix: str, values: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics or summary dict, keys prefixed (e.g. eval/accuracy); nested dicts flattened."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[f"{prefix}/{key}"] = float(value)
        elif isinstance(value, dict) and key in ("parameters", "similarity"):
            out.update(numeric(f"{prefix}/{key}", value))
    return out
