"""Wall-clock time to reach a dev accuracy on SST-2: Slingshot's defaults vs a tuned Hugging Face Trainer.

Full-size run (all 67,349 train rows, up to 2 epochs each, target 0.90 on the 872 dev rows; long on 2 CPU cores,
so run it on an otherwise idle machine):
    mkdir -p bench/results && .venv/bin/python bench/time_to_accuracy.py > bench/results/time_to_accuracy.json
Smoke test:
    .venv/bin/python bench/time_to_accuracy.py --rows 300 --eval-every 2 --hf-eval-every 4 --max-epochs 1

Each system runs in its own spawned process, one after the other, and evaluates on dev every so many optimizer
steps; every evaluation is recorded with the wall-clock seconds since its training loop started (evaluation time
included). Slingshot: train.eval_every=--eval-every, train.epochs=--max-epochs, and
train.early_stopping.target=--target, which stops training at the first evaluation at or above the target. Trainer (the tuned one of bench/throughput.py): eval_strategy="steps", and a
callback stops training at the first evaluation at or above --target. Reported: both histories, each time to
target (null if never reached) and their ratio Slingshot / Trainer (target: <= 0.7). JSON to stdout.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import (
    LABEL_NAMES,
    MODEL_NAME,
    emit,
    log,
    machine_info,
    model_dir,
    read_sst2,
    read_tsv,
    run_isolated,
    shuffled_subset,
    sst2_path,
    warn_if_busy,
    write_tsv,
)
from hf_baseline import hf_dataset, hf_model, tuned_training_args

TARGET_RATIO = 0.7


def first_at(history: list[dict], target: float) -> dict | None:
    return next((entry for entry in history if entry["accuracy"] >= target), None)


def run_slingshot(train_tsv: str, dev_tsv: str, out_dir: str, threads: int, seed: int, eval_every: int,
                  max_epochs: float, target: float) -> dict:
    from slingshot.recipe import recipe_from_dict
    from slingshot.train import train

    start = time.perf_counter()
    recipe = recipe_from_dict({
        "name": "bench-time-to-accuracy", "model": {"name": MODEL_NAME},
        "data": {"train": train_tsv, "eval": dev_tsv, "text_column": "sentence", "label_names": LABEL_NAMES},
        "train": {"epochs": max_epochs, "eval_every": eval_every, "threads": threads, "seed": seed,
                  "early_stopping": {"target": target}},
        "output": {"dir": out_dir},
    })
    result = train(recipe, overwrite=True, show_progress=True)
    summary = result.summary
    return {
        # elapsed_s: Slingshot's run wall time at the end of that evaluation (loop start = 0).
        "history": [{"step": e["step"], "elapsed_s": e["elapsed_s"], "accuracy": e["accuracy"]}
                    for e in result.metrics["evaluations"]],
        "optimizer_steps": summary["optimizer_steps"],
        "examples_per_step": round(summary["examples_seen"] / max(summary["optimizer_steps"], 1), 2),
        "loop_wall_s": summary["wall_time_s"],
        "process_wall_s": round(time.perf_counter() - start, 2),
    }


def run_trainer(train_tsv: str, dev_tsv: str, out_dir: str, threads: int, seed: int, eval_every: int,
                max_epochs: float, target: float) -> dict:
    import numpy as np
    import torch
    from transformers import (
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
    )

    start = time.perf_counter()
    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir()))
    train_ds = hf_dataset(tokenizer, *read_tsv(Path(train_tsv)), max_length=128)
    dev_ds = hf_dataset(tokenizer, *read_tsv(Path(dev_tsv)), max_length=128)
    history: list[dict] = []

    class StopAtTarget(TrainerCallback):
        """Records each evaluation's time since train start, and stops training once the target is reached."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            accuracy = float(metrics["eval_accuracy"])
            history.append({"step": state.global_step, "elapsed_s": round(time.perf_counter() - self.t0, 2),
                            "accuracy": accuracy})
            log(f"trainer eval at step {state.global_step}: accuracy {accuracy:.4f}")
            if accuracy >= target:
                control.should_training_stop = True
            return control

    def accuracy(prediction) -> dict:
        # label_ids come in the predictions' order, which group_by_length has length-grouped: never file order.
        return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}

    args = tuned_training_args(out_dir, seed, num_train_epochs=max_epochs, eval_strategy="steps",
                               eval_steps=eval_every)
    trainer = Trainer(model=hf_model(seed), args=args, train_dataset=train_ds, eval_dataset=dev_ds,
                      data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
                      compute_metrics=accuracy, callbacks=[StopAtTarget()])
    loop_start = time.perf_counter()
    trainer.train()
    if not first_at(history, target) and (not history or history[-1]["step"] != trainer.state.global_step):
        trainer.evaluate()  # Slingshot always evaluates its last step: so does this, when the target was missed
    return {
        "history": history,
        "optimizer_steps": trainer.state.global_step,
        "examples_per_step": args.per_device_train_batch_size,
        "loop_wall_s": round(time.perf_counter() - loop_start, 2),
        "process_wall_s": round(time.perf_counter() - start, 2),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=None, help="train rows, first N of a seeded shuffle (default all)")
    parser.add_argument("--target", type=float, default=0.90, help="dev accuracy to reach")
    parser.add_argument("--max-epochs", type=float, default=2, help="stop each system after this many epochs")
    parser.add_argument("--eval-every", type=int, default=200, help="Slingshot: evaluate every N optimizer steps")
    parser.add_argument("--hf-eval-every", type=int, default=None,
                        help="Trainer: evaluate every N steps of 32 examples; default: as many examples between "
                             "evaluations as Slingshot had (measured from its run)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both systems")
    parser.add_argument("--seed", type=int, default=42, help="seed of the row shuffle and of both systems")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    warn_if_busy()
    dev_tsv = str(sst2_path("dev"))
    dev_rows = len(read_tsv(Path(dev_tsv))[0])
    with tempfile.TemporaryDirectory(prefix="slingshot-bench-") as tmp:
        if args.rows is None:
            train_tsv = str(sst2_path("train"))
            rows = len(read_sst2("train")[0])
        else:  # one file with the chosen rows, read by both systems
            sentences, labels = shuffled_subset(*read_sst2("train"), args.rows, args.seed)
            train_tsv, rows = str(write_tsv(Path(tmp) / "train.tsv", sentences, labels)), len(sentences)
        log("--- slingshot ---")
        slingshot = run_isolated(run_slingshot, train_tsv, dev_tsv, f"{tmp}/runs", args.threads, args.seed,
                                 args.eval_every, args.max_epochs, args.target)
        # Slingshot's batches hold a token budget, not a fixed count (~64 short SST-2 sentences): evaluate the
        # Trainer after the same number of examples, so neither system is favoured by evaluating less often.
        hf_eval_every = args.hf_eval_every or max(1, round(args.eval_every * slingshot["examples_per_step"] / 32))
        log(f"--- trainer (eval every {hf_eval_every} steps) ---")
        trainer = run_isolated(run_trainer, train_tsv, dev_tsv, f"{tmp}/trainer", args.threads, args.seed,
                               hf_eval_every, args.max_epochs, args.target)

    s_hit, t_hit = first_at(slingshot["history"], args.target), first_at(trainer["history"], args.target)
    s_time, t_time = (hit["elapsed_s"] if hit else None for hit in (s_hit, t_hit))
    ratio = round(s_time / t_time, 3) if s_time and t_time else None
    emit({
        "benchmark": "time_to_accuracy",
        "rows": rows, "dev_rows": dev_rows, "target_accuracy": args.target, "max_epochs": args.max_epochs,
        "eval_every": {"slingshot": args.eval_every, "trainer": hf_eval_every},
        "slingshot": {**slingshot, "time_to_target_s": s_time, "reached_at": s_hit},
        "trainer": {**trainer, "time_to_target_s": t_time, "reached_at": t_hit},
        "ratio_slingshot_over_trainer": ratio,
        "targets": {"time_ratio_le_0.7": {"measured": ratio, "met": ratio is not None and ratio <= TARGET_RATIO}},
        "machine": machine_info(args.threads),
    })


if __name__ == "__main__":
    main()
