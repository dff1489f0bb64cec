"""Fine-tuning on small labelled sets: do the defaults give the model enough optimizer steps?

A token budget of 1,024 per batch holds about 50 short texts, so 1,000 SST-2 sentences make ~19 steps an epoch.
This trains all-MiniLM-L6-v2 (method full) at several training-set sizes, seeds and recipe variants, each variant
on the same seeded sample, and reports the eval score (the recipe's train.metric: dev accuracy for
classification) of the best and of the last evaluation (one per epoch):
    .venv/bin/python bench/small_data.py --dataset sst2 --sizes 300,1000 --seeds 0,1,2 \
        --variant before:train.min_steps=null --variant now: > bench/results/small_data.json
A variant is NAME:key=value,key=value (recipe overrides as `slingshot train --set`; empty for the defaults).
--dataset policyqa trains extractive QA from examples/policyqa/recipe.yaml (its 16 training policies sampled to
--sizes questions, scored on the 4 held-out ones by F1; the sample and the held-out policies follow the recipe's
data.seed, so --seeds varies the training seed only), e.g. the LoRA learning rate there (README, "How it trains"):
    .venv/bin/python bench/small_data.py --dataset policyqa --sizes 300 --seeds 0 --limit-eval 300 --threads 1 \
        --variant lora1e-4:train.method=lora,train.lr=1e-4,similarity.enabled=false \
        --variant lora1e-3:train.method=lora,train.lr=1e-3,similarity.enabled=false
Smoke test:
    .venv/bin/python bench/small_data.py --sizes 100 --seeds 0 --variant defaults: --limit-eval 100
The JSON goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import LABEL_NAMES, MODEL_NAME, emit, log, machine_info, sst2_path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
DATASETS = {  # train file, eval file, text column, label column, label names (None: the labels are the names)
    "sst2": (sst2_path("train"), sst2_path("dev"), "sentence", "label", LABEL_NAMES),
    "tweet": (SHARED / "tweet_sentiment_extraction/train.csv", SHARED / "tweet_sentiment_extraction/test.csv",
              "text", "sentiment", None),
}
QA_RECIPE = Path(__file__).resolve().parents[1] / "examples" / "policyqa" / "recipe.yaml"  # --dataset policyqa


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=[*sorted(DATASETS), "policyqa"], default="sst2")
    parser.add_argument("--sizes", default="300,1000", help="training rows per run, comma-separated")
    parser.add_argument("--seeds", default="0,1,2", help="seeds (sample and training), comma-separated")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                        help="a recipe variant (repeatable); default: the defaults alone")
    parser.add_argument("--limit-eval", type=int, default=None, help="score on a seeded sample of the eval set")
    parser.add_argument("--threads", type=int, default=None, help="train.threads")
    return parser.parse_args()


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition(":")
    return name, [item for item in overrides.split(",") if item]


def main() -> None:
    args = parse_args()
    from slingshot.recipe import apply_overrides, recipe_from_dict
    from slingshot.train import train

    variants = [parse_variant(v) for v in args.variant] or [("defaults", [])]
    sizes = [int(s) for s in args.sizes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = []
    with tempfile.TemporaryDirectory() as out:
        for size in sizes:
            for seed in seeds:
                for name, overrides in variants:
                    raw = base_recipe(args.dataset, size, seed, args.limit_eval)
                    raw.update({"name": f"{name}-{size}-{seed}", "output": {"dir": out}})
                    if args.threads:
                        raw["train"]["threads"] = args.threads
                    recipe = recipe_from_dict(apply_overrides(raw, overrides), source="bench/small_data.py")
                    metric = recipe.best_metric
                    started = time.perf_counter()
                    with contextlib.redirect_stdout(sys.stderr):
                        result = train(recipe, overwrite=True, show_progress=False)
                    evaluations = result.metrics["evaluations"]
                    run = {"variant": name, "size": size, "seed": seed, "metric": metric,
                           "best": result.metrics["eval"][metric],
                           "last": evaluations[-1][metric],
                           "best_step": result.metrics["best_step"],
                           "optimizer_steps": result.summary["optimizer_steps"],
                           "epochs": result.summary["epochs_completed"],
                           "train_time_s": result.summary["train_time_s"],
                           "end_to_end_s": round(time.perf_counter() - started, 1)}
                    log(run)
                    runs.append(run)
    table = []
    for size in sizes:
        for name, _ in variants:
            mine = [r for r in runs if r["size"] == size and r["variant"] == name]
            scale = 100 if mine[0]["metric"] == "accuracy" else 1  # accuracy in %, F1 is already
            best = [scale * r["best"] for r in mine]
            last = [scale * r["last"] for r in mine]
            table.append({"size": size, "variant": name,
                          "best_mean": round(statistics.mean(best), 2),
                          "best_std": round(statistics.stdev(best), 2) if len(best) > 1 else None,
                          "last_mean": round(statistics.mean(last), 2),
                          "last_std": round(statistics.stdev(last), 2) if len(last) > 1 else None,
                          "steps": [r["optimizer_steps"] for r in mine],
                          "train_time_s_mean": round(statistics.mean(r["train_time_s"] for r in mine), 1)})
    emit({"benchmark": "small_data", "dataset": args.dataset, "model": MODEL_NAME,
          "variants": {name: overrides for name, overrides in variants}, "summary": table, "runs": runs,
          "machine": machine_info(args.threads)})


def base_recipe(dataset: str, size: int, seed: int, limit_eval: int | None) -> dict:
    """The recipe dict of one run before its variant's overrides: `size` training rows (questions) sampled with
    `seed`, which also seeds training."""
    limit = {"train": size, **({"eval": limit_eval} if limit_eval else {})}
    if dataset == "policyqa":
        import yaml

        raw = yaml.safe_load(QA_RECIPE.read_text(encoding="utf-8"))
        raw["data"]["train"] = str((QA_RECIPE.parent / raw["data"]["train"]).resolve())
        raw["data"]["limit"] = limit  # the policies held out stay those of data.seed: the same eval for every seed
        raw["train"]["seed"] = seed
        return raw
    train_file, eval_file, text_column, label_column, label_names = DATASETS[dataset]
    data = {"train": str(train_file), "eval": str(eval_file), "text_column": text_column,
            "label_column": label_column, "seed": seed, "limit": limit}
    if label_names:
        data["label_names"] = label_names
    return {"task": "classification", "model": {"name": MODEL_NAME}, "data": data, "train": {"seed": seed}}


if __name__ == "__main__":
    main()
