"""Encoder-decoder fine-tuning on a CPU: real tokens/s and peak memory of LoRA vs full fine-tuning of a small T5.

No pretrained T5 can be downloaded here, so the model is built from a config with t5-small's shape by default
(6 + 6 layers, 512 wide, 8 heads, 2048-wide MLP; random weights) and a Unigram tokenizer trained on the data, so its
vocabulary (and embedding table) is smaller than t5-small's 32k; throughput and memory depend on shapes, not on
what was learnt.

`slingshot train` (the real loop) on reading comprehension from docs2qa (source: question and context, ~300
tokens; target: the answer), one process per method so that peak RSS is each method's own. Real tokens are source
plus target tokens. Data: examples/nist-qa/pairs.jsonl. Prints one JSON object.
    nice .venv/bin/python bench/seq2seq.py [--steps 20] [--threads 2] [--d-model 512 --layers 6]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    REPO,
    emit,
    log,
    machine_info,
    peak_rss_mb,
    run_isolated,
    warn_if_busy,
)

DATA = REPO / "examples" / "nist-qa"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def build_t5(folder: Path, d_model: int, layers: int, heads: int, d_ff: int, vocab: int) -> dict:
    """A T5 built from a config (random weights) and a Unigram tokenizer trained on the example's texts."""
    import torch
    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    texts = [row["context"] + " " + row["question"] + " " + row["answer"] for row in read_jsonl(DATA / "pairs.jsonl")]
    texts.append("question: context: 0123456789 .,:;?!'()-")
    unigram = SentencePieceUnigramTokenizer()
    unigram.train_from_iterator(texts, vocab_size=vocab, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    pieces = [tuple(piece) for piece in json.loads(unigram.to_str())["model"]["vocab"]]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=d_model // heads, d_ff=d_ff, num_layers=layers,
                      num_decoder_layers=layers, num_heads=heads, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    model = T5ForConditionalGeneration(config)
    model.save_pretrained(folder)
    return {"parameters": sum(p.numel() for p in model.parameters()), "vocab": len(tokenizer),
            "layers": f"{layers} + {layers}", "d_model": d_model, "d_ff": d_ff, "heads": heads}


def train_once(model: str, data: str, eval_data: str, method: str, steps: int, threads: int) -> dict:
    """`steps` optimizer steps of `slingshot train` in this (isolated) process; tokens/s from the training log."""
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    from slingshot.recipe import recipe_from_dict
    from slingshot.train import train

    out = tempfile.mkdtemp(prefix="bench-s2s-")
    recipe = recipe_from_dict({
        "name": method, "task": "seq2seq", "model": {"name": model, "max_length": 512},
        "data": {"train": data, "eval": eval_data},
        "train": {"method": method, "epochs": 1000, "lr": 1e-3 if method == "full" else 1e-2, "threads": threads,
                  "warmup_ratio": 0.0, "schedule": "constant", "tokens_per_batch": 2048, "log_every": 1,
                  "eval_every": 10_000},
        "generation": {"max_new_tokens": 64},
        "similarity": {"enabled": False}, "output": {"dir": out},
    })
    result = train(recipe, show_progress=False, stop_after_steps=steps)  # interrupted on purpose: no summary
    lines = [json.loads(line) for line in result.run.train_log.read_text().splitlines()]
    last = [line for line in lines if "real_tokens_per_s" in line][-1]
    return {"method": method, "optimizer_steps": last["step"], "real_tokens_per_s": last["real_tokens_per_s"],
            "final_loss": last["loss"], "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps timed per method")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6, help="encoder layers (as many decoder layers)")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--d-ff", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=8000, help="Unigram vocabulary trained on the data")
    parser.add_argument("--rows", type=int, default=None, help="use the first N pairs (default: all)")
    args = parser.parse_args()
    warn_if_busy()
    folder = Path(tempfile.mkdtemp(prefix="bench-t5-"))
    result: dict = {"machine": machine_info(args.threads)}
    result["model"] = build_t5(folder, args.d_model, args.layers, args.heads, args.d_ff, args.vocab)
    log(f"model: {result['model']}")
    pairs = read_jsonl(DATA / "pairs.jsonl")[: args.rows]
    rows = [{"prompt": f"question: {p['question']} context: {p['context']}", "completion": p["answer"]} for p in pairs]
    train_file = folder / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    eval_file = folder / "eval.jsonl"
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]), encoding="utf-8")
    result["train_rows"] = len(rows)
    figures = {}
    for method in ("lora", "full"):
        log(f"throughput: {method}, {args.steps} steps")
        figures[method] = run_isolated(train_once, str(folder), str(train_file), str(eval_file), method, args.steps,
                                       args.threads)
        log(json.dumps(figures[method]))
    result["throughput"] = figures
    result["lora_speedup"] = round(figures["lora"]["real_tokens_per_s"] / figures["full"]["real_tokens_per_s"], 2)
    result["measured_at"] = time.strftime("%Y-%m-%d %H:%M")
    emit(result)


if __name__ == "__main__":
    main()
