"""Teacher labels and active learning on SST-2 without an LLM: a simulated teacher, a real student.

    mkdir -p bench/results && nice .venv/bin/python bench/label_sst2.py > bench/results/label_sst2.json
Smoke test:
    .venv/bin/python bench/label_sst2.py --rows 300 --epochs 1 --al-seeds 1 --al-rounds 1 --al-pool 300 --al-steps 10

1. Student vs teacher. A simulated teacher labels --rows SST-2 training sentences (seeded subset) with a chosen
   error rate (--error-rate, default 8%, roughly a zero-shot LLM on SST-2):
   - "uniform": that share of labels flipped at random, no confidence;
   - "calibrated": each label gets a confidence c = 0.5 + 0.5 * Beta(a, b) (mean 1 - error rate) and is right
     with probability c, so confidence means what it says.
   all-MiniLM-L6-v2 is trained with Slingshot on each (eval split held out of the teacher labels, as a user without
   gold labels would), and on the gold labels for reference; then on the calibrated labels filtered at
   --min-confidence, and weighted by confidence. Student and teacher are scored on the 872 dev sentences (the
   teacher labels dev by the same process, another seed), with their agreement and McNemar's exact test.
2. Active learning. From --al-pool training sentences with 16 per class labelled, --al-rounds rounds each add
   100 texts: picked by `slingshot select` (strategy --strategy) on the last round's model, or at random; labels
   come from gold (a person labelling). Each round trains from scratch for --al-steps optimizer steps; dev
   accuracy after every round, mean over --al-seeds seeds.
The JSON goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import (
    LABEL_NAMES,
    MODEL_NAME,
    emit,
    log,
    machine_info,
    read_sst2,
    shuffled_subset,
    sst2_path,
)

from slingshot.data import read_rows
from slingshot.recipe import SelectSection, recipe_from_dict
from slingshot.rundir import write_table
from slingshot.selection import select_file
from slingshot.stats import mcnemar_exact
from slingshot.train import train


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=4000, help="training sentences the teacher labels")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--error-rate", type=float, default=0.08)
    parser.add_argument("--min-confidence", type=float, default=0.8)
    parser.add_argument("--al-pool", type=int, default=3000)
    parser.add_argument("--al-rounds", type=int, default=5)
    parser.add_argument("--al-batch", type=int, default=100)
    parser.add_argument("--al-seeds", type=int, default=3)
    parser.add_argument("--al-steps", type=int, default=100, help="optimizer steps per active-learning round")
    parser.add_argument("--strategy", default="mixed", choices=["uncertainty", "diverse", "mixed"])
    parser.add_argument("--skip-teacher", action="store_true")
    parser.add_argument("--skip-al", action="store_true")
    return parser.parse_args()


def simulate_teacher(labels: list[int], error_rate: float, calibrated: bool, seed: int):
    """Teacher labels (and confidences when calibrated) for gold labels, with `error_rate` wrong on average."""
    rng = np.random.default_rng(seed)
    gold = np.asarray(labels)
    if not calibrated:
        wrong = rng.random(len(gold)) < error_rate
        return np.where(wrong, 1 - gold, gold).tolist(), None
    # c = 0.5 + 0.5 * Beta(a, b) with mean 1 - error_rate: Beta mean m = 1 - 2 * error_rate; b = 1 keeps the
    # spread wide (a few very unsure labels, most sure ones), a = m b / (1 - m).
    mean = 1 - 2 * error_rate
    confidence = 0.5 + 0.5 * rng.beta(mean / (1 - mean), 1.0, size=len(gold))
    wrong = rng.random(len(gold)) >= confidence
    return np.where(wrong, 1 - gold, gold).tolist(), confidence.round(4).tolist()


def write_labelled(path: Path, texts, labels, confidences=None) -> Path:
    records = [{"sentence": t, "label": LABEL_NAMES[y], "confidence": None if confidences is None else confidences[i],
                "teacher": "simulated"} for i, (t, y) in enumerate(zip(texts, labels))]
    write_table(path, records, ["sentence", "label", "confidence", "teacher"])
    return path


def train_student(work: Path, name: str, train_file: Path, *, gold: Path | None, eval_file: Path | None = None,
                  epochs: float = 2, steps: int | None = None, seed: int = 42, **data) -> tuple[dict, Path, float]:
    """Train all-MiniLM-L6-v2 with Slingshot; metrics, run folder and wall seconds."""
    train_section: dict = {"epochs": epochs, "seed": seed}
    if steps is not None:  # a fixed number of optimizer steps, one evaluation at the end
        batches = math.ceil(data.pop("rows") / 16)
        train_section.update({"epochs": steps / batches, "max_batch_size": 16, "eval_every": 10**6})
    raw = {"name": name, "model": {"name": MODEL_NAME},
           "data": {"train": str(train_file), "text_column": "sentence", "label_column": "label",
                    "label_names": LABEL_NAMES, "seed": seed, **data},
           "train": train_section, "output": {"dir": str(work)}}
    if gold is not None:
        raw["data"]["gold"] = str(gold)
    if eval_file is not None:
        raw["data"]["eval"] = str(eval_file)
    start = time.perf_counter()
    result = train(recipe_from_dict(raw), overwrite=True, show_progress=False)
    return result.metrics, result.run.path, time.perf_counter() - start


def final_train_loss(run: Path) -> float | None:
    """The last logged training loss: tells runs apart that end with the same dev predictions."""
    import json

    losses = [json.loads(line).get("loss") for line in (run / "train_log.jsonl").read_text().splitlines()]
    losses = [loss for loss in losses if loss is not None]
    return losses[-1] if losses else None


def gold_predictions(run: Path) -> list[int]:
    import json

    lines = (run / "predictions_gold.jsonl").read_text(encoding="utf-8").splitlines()
    return [LABEL_NAMES.index(json.loads(line)["predicted"]) for line in lines]


def student_vs_teacher(args, work: Path) -> dict:
    texts, labels = shuffled_subset(*read_sst2("train"), args.rows, seed=0)
    _, dev_labels = read_sst2("dev")
    dev = sst2_path("dev")
    dev_gold = np.asarray(dev_labels)
    results: dict = {"rows": args.rows, "epochs": args.epochs, "error_rate": args.error_rate, "students": {}}
    uniform, _ = simulate_teacher(labels, args.error_rate, calibrated=False, seed=1)
    calibrated, confidence = simulate_teacher(labels, args.error_rate, calibrated=True, seed=2)
    teacher_dev = {"uniform": simulate_teacher(dev_labels, args.error_rate, False, seed=11)[0],
                   "calibrated": simulate_teacher(dev_labels, args.error_rate, True, seed=12)[0]}
    files = {"gold": write_labelled(work / "gold.tsv", texts, labels),
             "uniform": write_labelled(work / "uniform.tsv", texts, uniform),
             "calibrated": write_labelled(work / "calibrated.tsv", texts, calibrated, confidence)}
    conf = np.asarray(confidence)
    kept = conf >= args.min_confidence
    results["teacher_label_accuracy"] = {
        "uniform": float(np.mean(np.asarray(uniform) == labels)),
        "calibrated": float(np.mean(np.asarray(calibrated) == labels)),
        f"calibrated_min_confidence_{args.min_confidence}": float(np.mean(np.asarray(calibrated)[kept]
                                                                          == np.asarray(labels)[kept])),
        "kept_share_at_min_confidence": float(kept.mean())}
    students = [("gold labels (reference)", "gold", None, {}),
                ("uniform-noise teacher", "uniform", "uniform", {}),
                ("calibrated teacher, all labels", "calibrated", "calibrated", {}),
                (f"calibrated teacher, confidence >= {args.min_confidence}", "calibrated", "calibrated",
                 {"min_confidence": args.min_confidence}),
                ("calibrated teacher, weighted by confidence", "calibrated", "calibrated",
                 {"weight_by_confidence": True})]
    for index, (title, source, teacher, options) in enumerate(students):
        log(f"[teacher] {title}")
        metrics, run, wall = train_student(work, f"student-{index}", files[source], gold=dev, epochs=args.epochs,
                                           **options)
        student = np.asarray(gold_predictions(run))
        entry = {"student_dev_accuracy": metrics["gold"]["accuracy"], "student_dev_loss": metrics["gold"].get("loss"),
                 "final_train_loss": final_train_loss(run), "train_wall_s": round(wall, 1),
                 "training_rows": len(texts) if "min_confidence" not in options else int(kept.sum())}
        if teacher is not None:
            teacher_answers = np.asarray(teacher_dev[teacher])
            test = mcnemar_exact(student == dev_gold, teacher_answers == dev_gold)
            entry.update({"teacher_dev_accuracy": float(np.mean(teacher_answers == dev_gold)),
                          "agreement": float(np.mean(student == teacher_answers)),
                          "mcnemar_p": test.p_value, "only_student_right": test.only_a_correct,
                          "only_teacher_right": test.only_b_correct})
        results["students"][title] = entry
        log(f"  {entry}")
        shutil.rmtree(run, ignore_errors=True)
    return results


def active_learning(args, work: Path) -> dict:
    texts, labels = shuffled_subset(*read_sst2("train"), args.al_pool, seed=100)
    truth = dict(zip(texts, labels))
    pool = work / "pool.tsv"
    write_table(pool, [{"sentence": t} for t in texts], ["sentence"])
    dev = sst2_path("dev")
    curves: dict[str, list[list[float]]] = {"selected": [], "random": []}
    for seed in range(args.al_seeds):
        rng = np.random.default_rng(seed)
        start = [i for label in (0, 1) for i in rng.permutation(np.flatnonzero(np.asarray(labels) == label))[:16]]
        labelled = {arm: [texts[i] for i in start] for arm in curves}
        per_seed = {arm: [] for arm in curves}
        for round_ in range(args.al_rounds + 1):
            for arm in curves:
                if round_ == 0 and arm == "random":  # the same first model serves both arms
                    per_seed["random"].append(per_seed["selected"][0])
                    continue
                name = f"al-{seed}-{arm}-{round_}"
                train_file = write_labelled(work / f"{name}.tsv", labelled[arm], [truth[t] for t in labelled[arm]])
                metrics, run, wall = train_student(work, name, train_file, gold=None, eval_file=dev,
                                                   steps=args.al_steps, seed=seed, rows=len(labelled[arm]))
                per_seed[arm].append(metrics["eval"]["accuracy"])
                log(f"[al] seed {seed} round {round_} {arm}: {len(labelled[arm])} labels, "
                    f"accuracy {metrics['eval']['accuracy']:.4f} ({wall:.0f} s)")
                if round_ < args.al_rounds and arm == "selected":
                    picks = select_file(str(run), str(pool), SelectSection(n=args.al_batch, strategy=args.strategy),
                                        output=str(work / f"{name}-picks.tsv"))
                    labelled["selected"] += [record["sentence"] for record in read_rows(str(picks.path)).records]
                shutil.rmtree(run, ignore_errors=True)
            if round_ < args.al_rounds:
                have = set(labelled["random"])
                fresh = [t for t in rng.permutation(np.asarray(texts, dtype=object)) if t not in have]
                labelled["random"] += list(fresh[: args.al_batch])
        for arm, values in curves.items():
            values.append(per_seed[arm])
    labels_per_round = [32 + args.al_batch * r for r in range(args.al_rounds + 1)]
    return {"pool": args.al_pool, "rounds": args.al_rounds, "batch": args.al_batch, "seeds": args.al_seeds,
            "steps_per_round": args.al_steps, "strategy": args.strategy, "labels": labels_per_round,
            "mean_accuracy": {arm: np.mean(values, axis=0).round(4).tolist() for arm, values in curves.items()},
            "std_accuracy": {arm: np.std(values, axis=0).round(4).tolist() for arm, values in curves.items()},
            "per_seed": curves}


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    output: dict = {"benchmark": "label_sst2", "machine": machine_info(), "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="slingshot-label-bench-") as folder:
        work = Path(folder)
        if not args.skip_teacher:
            output["student_vs_teacher"] = student_vs_teacher(args, work)
        if not args.skip_al:
            output["active_learning"] = active_learning(args, work)
    output["wall_s"] = round(time.perf_counter() - started, 1)
    output["load_average_end"] = machine_info()["load_average_1m"]
    emit(output)


if __name__ == "__main__":
    main()
