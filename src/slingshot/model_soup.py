"""Model soups: one model whose weights are the average of several runs fine-tuned from the same base model.

    runs (same base, same task, same labels) --average every weight, tensor by tensor--> a new run folder
    --score its eval (and test, gold) split once--> metrics.json, predictions, similarity, like a trained run

Runs fine-tuned from one pretrained checkpoint usually end in one basin of the loss, so the average of their weights
is itself a good model and often better than each of them (Wortsman et al. 2022, "Model soups: averaging weights of
multiple fine-tuned models improves accuracy without increasing inference time"): most of an ensemble's gain, at one
model's inference cost, with no more training. A soup of runs that share nothing but the architecture (different
base checkpoints) is not a good model; averaging needs one starting point.

Two recipes from the paper: the uniform soup (every run, equal shares, or `weights`) and the greedy soup
(`greedy=True`): score every run on the eval split, start from the best, and add each next-best run only when the
uniform mean with it scores at least as well on the eval split (the recipe's `train.metric`). Runs that would pull the
soup down (another basin, a bad learning rate) stay out, so the greedy soup is never worse than the best run on the
eval split; that split picked it, so its eval figure is optimistic the way a best checkpoint's is, and test and gold
(never looked at) say how well it does.

Written by hand rather than with mergekit: a uniform or weighted mean is a few lines on safetensors, and mergekit
targets LLM checkpoints (its own YAML, a heavy dependency). The soup is streamed one weight file at a time, each
tensor averaged in float64 and stored in the members' dtype.

LoRA generation and seq2seq runs keep only an adapter. The mean of their A and B matrices is not the mean of their
updates B A, but the mean of the updates is itself a LoRA adapter: A matrices stacked, B matrices side by side, each
scaled by its run's share and scaling (rank = the sum of the runs' ranks). PEFT builds it
(`add_weighted_adapter(combination_type="cat")`), so the soup of adapters equals the soup of the merged models
exactly, and stays megabytes; generation merges it into the base when it loads it, so the rank costs nothing then.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from slingshot.errors import RunDirError, SlingshotError
from slingshot.rundir import (
    ResourceMeter,
    RunDir,
    estimated_cost_usd,
    find_run,
    open_run,
    read_json,
    versions,
    write_json,
    write_text,
)

WEIGHT_SUFFIX = ".safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# adapter_config.json keys that must agree for the mean of the adapters' updates to mean anything
ADAPTER_IDENTITY = ("base_model_name_or_path", "revision", "task_type", "peft_type")
# config.json keys that say where and when a model was saved, not what it computes
CONFIG_NOISE = {"_name_or_path", "transformers_version", "dtype", "torch_dtype"}


@dataclass
class SoupResult:
    run: RunDir
    metrics: dict[str, Any]
    summary: dict[str, Any]


def soup(run_paths: list[str | Path], name: str | None = None, *, root: str | Path | None = None,
         weights: list[float] | None = None, greedy: bool = False, overwrite: bool = False,
         threads: int | None = None) -> SoupResult:
    """Average the weights of finished runs into `<root>/<name>/` (default: the first run's folder's parent, and
    `<first run>-soup`) and score it on the first run's eval split (and test/gold when its recipe has them).

    `weights` (one per run, positive) make a weighted mean; the default is uniform. `greedy` keeps only the runs
    that do not lower the eval score of the uniform mean, best run first (module docstring). Raises SlingshotError
    before anything is written when the runs cannot be averaged (fewer than two, unfinished, of different tasks,
    labels, tokenizers or shapes, adapters mixed with full weights), when the first run's data cannot be read, or
    when the target is one of them or a finished run (without overwrite).
    """
    from slingshot.data import load_data
    from slingshot.evaluate import run_recipe

    meter = ResourceMeter()
    start = time.perf_counter()
    if len(run_paths) < 2:
        raise SlingshotError("a soup needs at least two runs to average", "name two or more run folders")
    runs = [find_run(path) for path in run_paths]
    if len({run.path.resolve() for run in runs}) < len(runs):
        raise SlingshotError("the same run is named twice", "name each run once (use --weight to count one more)")
    for run in runs:
        if not run.finished:
            raise RunDirError(f"run {run.path} is not finished (no summary.json)",
                              "finish it first: slingshot train RECIPE --resume")
    if greedy and weights is not None:
        raise SlingshotError("a greedy soup takes equal shares of the runs it keeps; weights do not apply",
                             "drop --weight, or drop --greedy for a weighted mean")
    shares = mixing_weights(weights, len(runs))
    recipes = [run_recipe(run) for run in runs]
    files = weight_files(runs)
    check_compatible(runs, [r.task for r in recipes], files)

    first = runs[0]
    target_root = Path(root) if root is not None else first.path.parent
    target_name = name if name is not None else f"{first.path.name}-soup"
    if not target_name or target_name in (".", "..") or Path(target_name).name != target_name:
        raise SlingshotError(f"--name must be a folder name, not {target_name!r}",
                             "give a plain name, e.g. --name sst2-soup, and the folder with --out")
    target = (target_root / target_name).resolve()
    if any(target == run.path.resolve() or target in run.path.resolve().parents for run in runs):
        raise RunDirError(f"{target} is or holds one of the runs being averaged; it is not overwritten",
                          "give the soup another --name or --out")
    existing = RunDir(target_root / target_name)
    if existing.path.is_dir() and any(existing.path.iterdir()) and not overwrite:
        state = "finished" if existing.finished else "unfinished"
        raise RunDirError(f"run directory {existing.path} already holds a {state} run",
                          "pass --overwrite to replace it, or give the soup another --name")
    data = load_data(recipes[0])  # the data to score on must still be there before anything is written
    out = open_run(target_root, target_name, overwrite=overwrite, resume=False)
    candidates, search = runs, None
    try:
        raw = yaml.safe_load(first.recipe.read_text(encoding="utf-8"))
        raw["name"] = target_name
        raw.setdefault("output", {})["dir"] = str(target_root)
        write_text(out.recipe, yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
        if greedy:
            runs, search = greedy_members(runs, files[0], out, data, threads)
            files, shares = [files[0]] * len(runs), mixing_weights(None, len(runs))
        write_model(runs, files, shares, out.model)
        metrics = score(out, data, threads)
    except BaseException:
        shutil.rmtree(out.path, ignore_errors=True)  # half a soup is not a run
        raise
    metrics = {"soup_of": [str(run.path) for run in runs], "weights": shares, "best_step": None,
               "best_metric": None, "evaluations": [], **({"greedy": search} if search else {}), **metrics}
    write_json(out.metrics, metrics)
    members = [read_json(run.summary) for run in runs]
    tried = [read_json(run.summary) for run in candidates]
    wall = time.perf_counter() - start
    figures = meter.figures()
    recipe = run_recipe(out)
    members_cost = sum(float(m.get("estimated_cost_usd") or 0.0) for m in tried)
    summary = {
        "run": str(out.path),
        "task": recipe.task,
        "model": members[0].get("model"),
        "method": "soup",
        "soup_of": [{"run": str(run.path), "weight": share, "train_time_s": m.get("train_time_s"),
                     "wall_time_s": m.get("wall_time_s"), "estimated_cost_usd": m.get("estimated_cost_usd")}
                    for run, share, m in zip(runs, shares, members)],
        **({"candidates": [str(run.path) for run in candidates]} if search else {}),
        "parameters": members[0].get("parameters"),
        "soup_time_s": round(wall, 2),
        # what the soup cost: the training of every run it was made from (a greedy soup's left-out runs included)
        # plus the averaging and scoring
        "train_time_s": round(sum(float(m.get("train_time_s") or 0.0) for m in tried), 2),
        "wall_time_s": round(sum(float(m.get("wall_time_s") or 0.0) for m in tried) + wall, 2),
        "cpu_time_s": figures["cpu_time_s"],
        "peak_rss_mb": figures["peak_rss_mb"],
        "price_per_hour_usd": recipe.output.price_per_hour_usd,
        "estimated_cost_usd": round(members_cost + estimated_cost_usd(wall, recipe.output.price_per_hour_usd), 6),
        "versions": versions(),
    }
    write_json(out.summary, summary)
    return SoupResult(out, metrics, summary)


def mixing_weights(weights: list[float] | None, count: int) -> list[float]:
    """Each run's share of the soup, summing to 1: uniform by default."""
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise SlingshotError(f"{len(weights)} weights for {count} runs", "give one --weight per run, in run order")
    if any(not w > 0 for w in weights):
        raise SlingshotError(f"weights must be positive (got {weights})", "drop the run, or give it a weight above 0")
    total = sum(weights)
    return [w / total for w in weights]


def keeps_adapter(run: RunDir) -> bool:
    """Whether the run's model folder holds a LoRA adapter alone (generation and seq2seq runs of method lora/qlora)."""
    return (run.model / ADAPTER_CONFIG).is_file()


def weight_files(runs: list[RunDir]) -> list[list[str]]:
    """The safetensors files of each run's model folder (one file, or the shards of an index, plus a fewshot head).
    Raises RunDirError for runs of which some keep a LoRA adapter and some full weights, or a run without
    safetensors weights."""
    files = []
    for run in runs:
        if keeps_adapter(run) != keeps_adapter(runs[0]):
            adapter, full = (run, runs[0]) if keeps_adapter(run) else (runs[0], run)
            raise RunDirError(f"{adapter.path} keeps a LoRA adapter and {full.path} full weights; they cannot be "
                              "averaged as they are",
                              f"merge the adapter first (slingshot export {adapter.path} --merge), or average runs "
                              "of one method")
        names = sorted(p.name for p in run.model.glob(f"*{WEIGHT_SUFFIX}"))
        if not names:
            raise RunDirError(f"{run.model} has no safetensors weights to average",
                              "average runs written by slingshot train (model/model.safetensors)")
        files.append(names)
    return files


def check_compatible(runs: list[RunDir], tasks: list[str], files: list[list[str]]) -> None:
    """Raise SlingshotError naming the first run that cannot be averaged with the first one: another task, another
    architecture or labels (config.json), another tokenizer, other weight files, names, shapes or dtypes."""
    first = runs[0]
    if keeps_adapter(first):
        check_adapters(runs, tasks)
        return
    config = model_config(first)
    tokenizer = tokenizer_fingerprint(first)
    shapes = tensor_shapes(first, files[0])
    for run, task, names in zip(runs[1:], tasks[1:], files[1:]):
        where = f"{run.path} cannot be averaged with {first.path}"
        if task != tasks[0]:
            raise SlingshotError(f"{where}: task {task}, not {tasks[0]}", "average runs of one task")
        other = model_config(run)
        differing = sorted(k for k in config.keys() | other.keys() if config.get(k) != other.get(k))
        if differing:
            labels = " (its labels differ)" if {"id2label", "label2id"} & set(differing) else ""
            raise SlingshotError(f"{where}: its model config differs in {', '.join(differing[:4])}{labels}",
                                 "average runs fine-tuned from the same base model on the same labels")
        if tokenizer_fingerprint(run) != tokenizer:
            raise SlingshotError(f"{where}: its tokenizer differs", "average runs fine-tuned from the same base model")
        if names != files[0]:
            raise SlingshotError(f"{where}: its weight files differ ({', '.join(names)} against {', '.join(files[0])})",
                                 "average runs saved the same way (same task and method)")
        theirs = tensor_shapes(run, names)
        if theirs != shapes:
            missing = sorted(shapes.keys() ^ theirs.keys())
            detail = (f"weights only one has: {', '.join(missing[:3])}" if missing else
                      "weights of other shapes: " + ", ".join(k for k in shapes if shapes[k] != theirs[k])[:200])
            raise SlingshotError(f"{where}: {detail}", "average runs fine-tuned from the same base model")


def check_adapters(runs: list[RunDir], tasks: list[str]) -> None:
    """Raise SlingshotError for LoRA adapters whose updates cannot be summed exactly: other base models or tasks,
    another tokenizer, or adapters whose update is not B A times a scaling (DoRA, rank-stabilised scaling, which PEFT's
    concatenation does not carry over) or that train whole modules too (modules_to_save)."""
    first = runs[0]
    configs = [json.loads((run.model / ADAPTER_CONFIG).read_text(encoding="utf-8")) for run in runs]
    tokenizer = tokenizer_fingerprint(first)
    for run, task, config in zip(runs, tasks, configs):
        where = f"{run.path} cannot be averaged with {first.path}"
        if task != tasks[0]:
            raise SlingshotError(f"{where}: task {task}, not {tasks[0]}", "average runs of one task")
        differing = [key for key in ADAPTER_IDENTITY if config.get(key) != configs[0].get(key)]
        if differing:
            raise SlingshotError(f"{where}: its adapter differs in {', '.join(differing)} "
                                 f"({config.get(differing[0])!r} against {configs[0].get(differing[0])!r})",
                                 "average adapters trained on the same base model for the same task")
        if tokenizer_fingerprint(run) != tokenizer:
            raise SlingshotError(f"{where}: its tokenizer differs", "average runs fine-tuned from the same base model")
        unsupported = [key for key in ("use_dora", "use_rslora", "modules_to_save") if config.get(key)]
        if unsupported:
            raise SlingshotError(f"{run.path}'s adapter uses {', '.join(unsupported)}, which a soup of adapters "
                                 "cannot carry exactly",
                                 f"merge it first (slingshot export {run.path} --merge) and average merged models")


def model_config(run: RunDir) -> dict[str, Any]:
    config = json.loads((run.model / "config.json").read_text(encoding="utf-8"))
    return {k: v for k, v in config.items() if k not in CONFIG_NOISE}


def tokenizer_fingerprint(run: RunDir) -> str | None:
    """The vocabulary and rules of the run's tokenizer (tokenizer.json, or the vocabulary files)."""
    for name in ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "tokenizer.model"):
        path = run.model / name
        if path.is_file():
            return f"{name}:{hashlib.sha256(path.read_bytes()).hexdigest()}"
    return None


def tensor_shapes(run: RunDir, names: list[str]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every tensor of the run's weight files: file/name -> (dtype, shape), read from the headers only."""
    from safetensors import safe_open

    shapes = {}
    for file_name in names:
        with safe_open(str(run.model / file_name), framework="pt") as handle:
            for key in handle.keys():
                view = handle.get_slice(key)
                shapes[f"{file_name}/{key}"] = (view.get_dtype(), tuple(view.get_shape()))
    return shapes


def write_model(runs: list[RunDir], files: list[list[str]], shares: list[float], target: Path) -> None:
    """The first run's model folder (config, tokenizer, head settings) with every weight file replaced by the
    weighted mean of the runs' files. Floating-point tensors are averaged in float64 and stored in their own dtype;
    integer buffers (position ids) must be equal and are copied. Runs that keep a LoRA adapter: `write_adapter`."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    if keeps_adapter(runs[0]):
        write_adapter(runs, shares, target)
        return
    shutil.copytree(runs[0].model, target, ignore=shutil.ignore_patterns(f"*{WEIGHT_SUFFIX}"))
    for file_name in files[0]:
        handles = [safe_open(str(run.model / file_name), framework="pt") for run in runs]
        metadata = handles[0].metadata() or {}
        averaged = {}
        for key in handles[0].keys():
            tensors = [handle.get_tensor(key) for handle in handles]
            if tensors[0].is_floating_point():
                mean = sum(t.double() * share for t, share in zip(tensors, shares))
                averaged[key] = mean.to(tensors[0].dtype).contiguous()
            else:
                if any(not torch.equal(t, tensors[0]) for t in tensors[1:]):
                    raise SlingshotError(f"{key} in {file_name} is an integer tensor that differs between the runs",
                                         "average runs of the same base model")
                averaged[key] = tensors[0]
            del tensors
        save_file(averaged, str(target / file_name), metadata={**metadata, "format": metadata.get("format", "pt")})
        del averaged, handles


def write_adapter(runs: list[RunDir], shares: list[float], target: Path) -> None:
    """The first run's model folder with its adapter replaced by the one LoRA adapter whose update is the weighted
    mean of the runs' updates (module docstring): loaded onto the base model once, combined by PEFT, saved alone."""
    from slingshot.tasks.classification import quiet_peft_deprecation
    from slingshot.tasks.generation import load_adapter_model

    names = [f"member{index}" for index in range(len(runs))]
    model = load_adapter_model(runs[0].model, adapter_name=names[0])
    with quiet_peft_deprecation():
        for run, name in zip(runs[1:], names[1:]):
            model.load_adapter(str(run.model), adapter_name=name)
        try:
            model.add_weighted_adapter(names, shares, "default", combination_type="cat")
        except ValueError as error:  # PEFT's own checks (e.g. modules targeted as parameters)
            raise SlingshotError(f"PEFT cannot combine these adapters: {error}",
                                 "merge each run first (slingshot export RUN --merge) and average merged models")
        model.set_adapter("default")
        for name in names:
            model.delete_adapter(name)
    shutil.copytree(runs[0].model, target,
                    ignore=shutil.ignore_patterns(f"*{WEIGHT_SUFFIX}", ADAPTER_CONFIG, "*.bin"))
    model.save_pretrained(str(target), selected_adapters=["default"])


def greedy_members(runs: list[RunDir], files: list[str], out: RunDir, data,
                   threads: int | None) -> tuple[list[RunDir], dict[str, Any]]:
    """The greedy soup's runs (Wortsman et al. 2022, algorithm 1): every run scored alone on the eval split, then,
    best first, each one kept when the uniform mean of the kept runs and it scores at least as well as the kept runs
    alone. Each candidate is written to `out.model` and scored there, so every score is taken the same way as the
    final one. Returns the kept runs (best first) and the record of the search for metrics.json."""
    from slingshot.evaluate import run_recipe

    recipe = run_recipe(out)
    name, higher = recipe.best_metric, recipe.metric_greater_is_better

    def eval_score(members: list[RunDir]) -> float:
        shutil.rmtree(out.model, ignore_errors=True)
        write_model(members, [files] * len(members), mixing_weights(None, len(members)), out.model)
        metrics = score(out, data, threads, splits=("eval",), final=False).get("eval")
        if metrics is None:
            raise SlingshotError("a greedy soup picks its runs on the eval split, and the first run's data has none",
                                 "give the first run's recipe data.eval (or a train file to split), or drop --greedy")
        if name not in metrics:
            raise SlingshotError(f"train.metric {name} is not among the eval metrics ({', '.join(sorted(metrics))})",
                                 "set train.metric in the first run's recipe to one of them")
        return float(metrics[name])

    alone = [(eval_score([run]), order, run) for order, run in enumerate(runs)]
    alone.sort(key=lambda item: (-item[0] if higher else item[0], item[1]))  # best first; ties keep the given order
    kept, best = [alone[0][2]], alone[0][0]
    steps = []
    for _, _, run in alone[1:]:
        candidate = eval_score([*kept, run])
        take = candidate >= best if higher else candidate <= best
        steps.append({"added": str(run.path), name: candidate, "kept": take})
        if take:
            kept, best = [*kept, run], candidate
    shutil.rmtree(out.model, ignore_errors=True)
    record = {"metric": name, "split": "eval", "runs": [{"run": str(run.path), name: value} for value, _, run in alone],
              "steps": steps, name: best}
    return kept, record


def score(run: RunDir, data, threads: int | None, splits: tuple[str, ...] = ("eval", "test", "gold"),
          final: bool = True) -> dict[str, Any]:
    """The soup's metrics on the eval split of its recipe's `data` (`load_data`), and on test and gold when the
    recipe has them, with their predictions, similarity and judge verdicts written as `train` writes them
    (`final`; otherwise the metrics only, nothing written)."""
    from slingshot.evaluate import load_run
    from slingshot.train import autocast_dtype, evaluate_split, final_split_metrics

    loaded = load_run(str(run.path), threads)
    label_names = loaded.label_names or data.label_names
    device = torch.device("cpu")
    amp_dtype = autocast_dtype(loaded.recipe, device)
    collate = loaded.task.collator(loaded.tokenizer)
    metrics = {}
    for split in splits:
        if split not in data.splits:
            continue
        encoded = loaded.task.prepare({split: data.splits[split]}, loaded.tokenizer, loaded.recipe)[split]
        result = evaluate_split(loaded.task, loaded.model, encoded, collate, label_names, device, amp_dtype)
        metrics[split] = (final_split_metrics(loaded.task, loaded.recipe, run, split, data.splits[split], result,
                                              label_names) if final else result["metrics"])
    return metrics
