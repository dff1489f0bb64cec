"""Training throughput on CPU: Slingshot's defaults vs a tuned Hugging Face Trainer vs the pad-to-512 blog recipe.

Full-size run (4,000 seeded-shuffled SST-2 train rows, 200 of them for the slow padded recipe, which takes most of
the time; run it on an otherwise idle machine):
    mkdir -p bench/results && .venv/bin/python bench/throughput.py > bench/results/throughput.json
Smoke test:
    .venv/bin/python bench/throughput.py --rows 300 --padded-rows 8

Each system trains for one epoch on the same rows (the first --rows of a seeded shuffle of SST-2 train), in its own
spawned process, one after the other:
  slingshot  Slingshot's defaults (token-budget length-bucketed batches), train.epochs=1, evaluated at the end;
             train.min_steps off, so that its batches are those of a full SST-2 epoch.
  tuned      transformers.Trainer: truncation at 128, dynamic padding (DataCollatorWithPadding), batch 32,
             lr 5e-5, train_sampling_strategy="group_by_length"; dev accuracy from trainer.predict.
  padded     the blog recipe: padding="max_length" to 512, batch 1, gradient accumulation 4, lr 5e-5, on the first
             --padded-rows rows only (about 100x slower); real tokens/s only.
Measured per system: real (attention-mask = 1) and padded tokens processed, training time (Slingshot's
summary["train_time_s"], which covers forward/backward/step only; time of trainer.train() for the Trainer), real
tokens/s, dev accuracy (872 rows), peak memory of its process. Also fp32 matmul GFLOP/s before and after, and the
useful GFLOP/s = 6 * non-embedding parameters * real tokens/s. Targets: >= 1.3x tuned, >= 20x padded real tokens/s,
accuracy >= tuned's. JSON to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import (
    LABEL_NAMES,
    MODEL_NAME,
    emit,
    log,
    machine_info,
    matmul_gflops,
    model_dir,
    non_embedding_parameters,
    read_sst2,
    read_tsv,
    run_isolated,
    shuffled_subset,
    sst2_path,
    warn_if_busy,
    write_tsv,
)
from hf_baseline import CountingCollator, hf_dataset, hf_model, tuned_training_args

SYSTEMS = ("slingshot", "tuned", "padded")


def run_slingshot(train_tsv: str, dev_tsv: str, out_dir: str, threads: int, seed: int) -> dict:
    from slingshot.recipe import recipe_from_dict
    from slingshot.train import train

    recipe = recipe_from_dict({
        "name": "bench-throughput", "model": {"name": MODEL_NAME},
        "data": {"train": train_tsv, "eval": dev_tsv, "text_column": "sentence", "label_names": LABEL_NAMES},
        # log_every=1 only adds one log line per step: the last line's elapsed_s is the loop's wall time.
        # min_steps off: the rows stand in for a full SST-2 epoch (1,264 steps at 1,024 tokens, where it changes
        # nothing); on 4,000 rows alone it would halve the batches twice to reach 200 steps.
        "train": {"epochs": 1, "threads": threads, "seed": seed, "log_every": 1, "min_steps": None},
        "output": {"dir": out_dir},
    })
    result = train(recipe, overwrite=True, show_progress=True)
    summary = result.summary
    steps = [json.loads(line) for line in result.run.train_log.read_text().splitlines() if '"loss"' in line]
    real = summary["real_tokens"]
    return {
        "train_examples": summary["train_examples"],
        "optimizer_steps": summary["optimizer_steps"],
        "real_tokens": real,
        # summary exposes padding_fraction (4 decimals), not the padded count: derived, accurate to ~1e-4.
        "padded_tokens": round(real / (1 - summary["padding_fraction"])),
        "padding_fraction": summary["padding_fraction"],
        "train_time_s": summary["train_time_s"],
        "real_tokens_per_s": round(real / summary["train_time_s"], 1),
        # The loop's wall clock to the last step, data loading and collation included (train_time_s excludes them).
        "loop_wall_s": steps[-1]["elapsed_s"] if steps else None,
        "accuracy": result.metrics["eval"]["accuracy"],
        "threads": summary["threads"],
        "non_embedding_parameters": summary["parameters"]["non_embedding"],
        "peak_rss_mb_slingshot_summary": summary["peak_rss_mb"],
    }


def run_trainer(system: str, train_tsv: str, dev_tsv: str, out_dir: str, threads: int, seed: int,
                rows: int | None) -> dict:
    import time

    import numpy as np
    import torch
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir()))
    sentences, labels = read_tsv(Path(train_tsv))
    sentences, labels = sentences[:rows], labels[:rows]
    if system == "padded":  # the blog recipe: every example padded to the model's 512 positions
        tokenize, batch, accum, sampling = {"padding": "max_length", "max_length": 512}, 1, 4, "random"
    else:  # dynamic padding, and batches of similar lengths so that little padding is left
        tokenize, batch, accum, sampling = {"max_length": 128}, 32, 1, "group_by_length"
    train_ds = hf_dataset(tokenizer, sentences, labels, **tokenize)
    collator = CountingCollator(DataCollatorWithPadding(tokenizer))
    model = hf_model(seed)
    args = tuned_training_args(out_dir, seed, per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
                               train_sampling_strategy=sampling)
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=collator, processing_class=tokenizer)
    collator.active = True
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    collator.active = False
    result = {
        "train_examples": collator.examples,
        "optimizer_steps": trainer.state.global_step,
        "real_tokens": collator.real_tokens,
        "real_tokens_from_dataset": int(sum(sum(mask) for mask in train_ds["attention_mask"])),
        "padded_tokens": collator.padded_tokens,
        "padding_fraction": round(1 - collator.real_tokens / max(collator.padded_tokens, 1), 4),
        "train_time_s": round(train_s, 2),
        "real_tokens_per_s": round(collator.real_tokens / train_s, 1),
        "threads": torch.get_num_threads(),
        "non_embedding_parameters": non_embedding_parameters(model),
    }
    if system == "tuned":
        dev_sentences, dev_labels = read_tsv(Path(dev_tsv))
        output = trainer.predict(hf_dataset(tokenizer, dev_sentences, dev_labels, max_length=128))
        # group_by_length also length-groups the eval sampler: score against the label_ids predict returns,
        # which are in the order of its predictions, never against the file's order.
        assert sorted(output.label_ids.tolist()) == sorted(dev_labels)
        result["accuracy"] = float((np.argmax(output.predictions, axis=-1) == output.label_ids).mean())
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=4000, help="train rows (first N of a seeded shuffle)")
    parser.add_argument("--padded-rows", type=int, default=200, help="rows for the slow pad-to-512 recipe")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for every system")
    parser.add_argument("--seed", type=int, default=42, help="seed of the row shuffle and of every system")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {','.join(SYSTEMS)}")
    return parser.parse_args()


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def main() -> None:
    args = parse_args()
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not systems or set(systems) - set(SYSTEMS):
        raise SystemExit(f"error: --systems {args.systems!r}: choose one or more of {','.join(SYSTEMS)}")
    warn_if_busy()
    sentences, labels = shuffled_subset(*read_sst2("train"), args.rows, args.seed)
    dev_tsv = str(sst2_path("dev"))
    dev_rows = len(read_tsv(Path(dev_tsv))[0])
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="slingshot-bench-") as tmp:
        # One file with the chosen rows: Slingshot reads it as data.train, the Trainers read the same file.
        train_tsv = str(write_tsv(Path(tmp) / "train.tsv", sentences, labels))
        log(f"matmul GFLOP/s ({args.threads} threads) ...")
        gflops_before = matmul_gflops(threads=args.threads)
        for system in systems:
            log(f"--- {system} ---")
            if system == "slingshot":
                results[system] = run_isolated(run_slingshot, train_tsv, dev_tsv, f"{tmp}/runs", args.threads, args.seed)
            else:
                rows = args.padded_rows if system == "padded" else None
                results[system] = run_isolated(run_trainer, system, train_tsv, dev_tsv, f"{tmp}/{system}",
                                               args.threads, args.seed, rows)
            log(f"{system}: {results[system]['real_tokens_per_s']} real tokens/s")
        gflops_after = matmul_gflops(threads=args.threads)

    # N from the loaded model (counted in a child), never hard-coded.
    params = next(r["non_embedding_parameters"] for r in results.values())
    matmul_peak = max(gflops_before, gflops_after)
    for r in results.values():
        r["useful_gflop_per_s"] = round(6 * params * r["real_tokens_per_s"] / 1e9, 2)
        r["share_of_matmul_gflops"] = round(r["useful_gflop_per_s"] / matmul_peak, 4)
    s, t, p = (results.get(k, {}) for k in SYSTEMS)
    vs_tuned = ratio(s.get("real_tokens_per_s"), t.get("real_tokens_per_s"))
    vs_padded = ratio(s.get("real_tokens_per_s"), p.get("real_tokens_per_s"))
    # The same ratio with Slingshot's loop wall clock, which counts data loading as trainer.train()'s time does.
    s_wall_tps = s["real_tokens"] / s["loop_wall_s"] if s.get("loop_wall_s") else None
    emit({
        "benchmark": "throughput",
        "rows": len(sentences), "padded_rows": min(args.padded_rows, len(sentences)), "dev_rows": dev_rows,
        "seed": args.seed,
        "systems": results,
        "non_embedding_parameters": params,
        "matmul_gflops_fp32": {"before": gflops_before, "after": gflops_after, "peak_used": matmul_peak},
        "ratios": {
            "slingshot_over_tuned_real_tokens_per_s": vs_tuned,
            "slingshot_over_padded_real_tokens_per_s": vs_padded,
            "slingshot_loop_wall_over_tuned_real_tokens_per_s": ratio(s_wall_tps, t.get("real_tokens_per_s")),
        },
        "targets": {
            "speedup_vs_tuned_ge_1.3": {"measured": vs_tuned, "met": vs_tuned is not None and vs_tuned >= 1.3},
            "speedup_vs_padded_ge_20": {"measured": vs_padded, "met": vs_padded is not None and vs_padded >= 20},
            "accuracy_ge_tuned": {"slingshot": s.get("accuracy"), "tuned": t.get("accuracy"),
                                  "met": None if "accuracy" not in s or "accuracy" not in t
                                  else s["accuracy"] >= t["accuracy"]},
        },
        "machine": machine_info(args.threads),
    })


if __name__ == "__main__":
    main()
