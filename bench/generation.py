"""Generative fine-tuning on a CPU: LoRA vs full fine-tuning of a ~10M-parameter decoder, and a memorisation curve.

No pretrained LLM can be downloaded here, so the decoder is a Llama-style model built from a config (random
weights) with a BPE tokenizer trained on the data; throughput and memory depend on shapes, not on what was learnt.

  throughput: `slingshot train` (the real loop) on reading-comprehension conversations from docs2qa (context +
              question -> answer, ~300 tokens each), one process per method so peak RSS is each method's own;
  memorisation: the memorisation test's setting, a tiny decoder (2 layers, 64 wide) on 20 question-answer pairs,
              trained until exact match reaches 100% (eval every 10 steps), full fine-tuning and LoRA.

Data: examples/nist-qa/ (docs2qa's offline generator on two NIST PDFs). Prints one JSON object.
    nice .venv/bin/python bench/generation.py [--steps 30] [--threads 2] [--parts throughput,memorisation]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, emit, log, machine_info, run_isolated, warn_if_busy  # noqa: E402

DATA = REPO / "examples" / "nist-qa"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def build_decoder(folder: Path, hidden: int = 320, layers: int = 6, intermediate: int = 864, vocab: int = 4000) -> dict:
    """A Llama-style decoder (~10M parameters by default) and a BPE trained on the example's texts."""
    import torch
    from tokenizers import SentencePieceBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    texts = [row["context"] + " " + row["question"] + " " + row["answer"] for row in read_jsonl(DATA / "pairs.jsonl")]
    texts.append("User: Assistant: 0123456789 .,:;?!'()-")
    bpe = SentencePieceBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab, min_frequency=2, special_tokens=["<unk>", "<s>", "</s>"])
    trained = json.loads(bpe.to_str())["model"]
    tokenizer = LlamaTokenizer(vocab=trained["vocab"], merges=[tuple(m) for m in trained["merges"]], unk_token="<unk>",
                               bos_token="<s>", eos_token="</s>", model_max_length=512)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=8 if hidden % 8 == 0 else 4,
                         num_key_value_heads=4 if hidden % 8 == 0 else 2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    return {"parameters": sum(p.numel() for p in model.parameters()), "vocab": len(tokenizer),
            "layers": layers, "hidden": hidden}


def train_once(model: str, data: str, eval_data: str, method: str, steps: int, threads: int, extra: dict) -> dict:
    """One `slingshot train` run in this (isolated) process; the summary figures and the evaluations."""
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    from slingshot.recipe import recipe_from_dict
    from slingshot.train import train

    out = tempfile.mkdtemp(prefix="bench-gen-")
    train_options = {"method": method, "epochs": 1000, "lr": 3e-3 if method == "full" else 1e-2, "threads": threads,
                     "warmup_ratio": 0.0, "schedule": "constant", "tokens_per_batch": 2048, "log_every": 1,
                     **extra.pop("train", {})}
    recipe = recipe_from_dict({
        "name": method, "task": "generation", "model": {"name": model, "max_length": 512},
        "data": {"train": data, "eval": eval_data}, "train": train_options,
        "similarity": {"enabled": False}, "output": {"dir": out}, **extra,
    })
    result = train(recipe, show_progress=False, stop_after_steps=steps) if steps else train(recipe, show_progress=False)
    if steps:  # interrupted on purpose after `steps`: the summary is not written, so measure from the log
        log_lines = [json.loads(line) for line in (result.run.train_log).read_text().splitlines()]
        from common import peak_rss_mb

        last = [line for line in log_lines if "real_tokens_per_s" in line][-1]
        return {"method": method, "optimizer_steps": last["step"], "real_tokens_per_s": last["real_tokens_per_s"],
                "peak_rss_mb": round(peak_rss_mb(), 1)}
    summary = result.summary
    return {"method": method, "optimizer_steps": summary["optimizer_steps"], "parameters": summary["parameters"],
            "real_tokens_per_s": summary["real_tokens_per_s"], "peak_rss_mb": summary["peak_rss_mb"],
            "train_time_s": summary["train_time_s"],
            "curve": [{"step": e["step"], "exact_match": e["exact_match"]} for e in result.metrics["evaluations"]],
            "final": {k: round(v, 2) for k, v in result.metrics["eval"].items() if isinstance(v, float)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps timed per method")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parts", default="throughput,memorisation", help="comma-separated parts to run")
    args = parser.parse_args()
    parts = args.parts.split(",")
    warn_if_busy()
    folder = Path(tempfile.mkdtemp(prefix="bench-decoder-"))
    result: dict = {"machine": machine_info(args.threads)}
    if "throughput" in parts:
        result["decoder"] = build_decoder(folder)
        log(f"decoder: {result['decoder']}")
        result["throughput"] = throughput(folder, args)
    if "memorisation" in parts:
        small = folder / "small"
        small.mkdir()
        result["memorisation_decoder"] = build_decoder(small, hidden=64, layers=2, intermediate=128, vocab=1000)
        result["memorisation"] = memorisation(small, args)
    result["measured_at"] = time.strftime("%Y-%m-%d %H:%M")
    emit(result)


def throughput(folder: Path, args) -> dict:
    # reading comprehension: the answer is in the context the prompt carries (long sequences, as in RAG-style SFT)
    pairs = read_jsonl(DATA / "pairs.jsonl")
    long_rows = [{"prompt": f"{p['context']}\n\nQuestion: {p['question']}", "completion": p["answer"]} for p in pairs]
    long_file = folder / "long.jsonl"
    long_file.write_text("".join(json.dumps(r) + "\n" for r in long_rows), encoding="utf-8")
    short_eval = folder / "eval.jsonl"
    short_eval.write_text("".join(json.dumps(r) + "\n" for r in long_rows[:4]), encoding="utf-8")
    figures = {}
    for method in ("lora", "full"):
        log(f"throughput: {method}, {args.steps} steps")
        figures[method] = run_isolated(train_once, str(folder), str(long_file), str(short_eval), method, args.steps,
                                          args.threads, {"train": {"eval_every": 10_000}, "generation": {"max_new_tokens": 4}})
        log(json.dumps(figures[method]))
    return figures


def memorisation(folder: Path, args) -> dict:
    memorise = folder / "memorise.jsonl"
    chat = read_jsonl(DATA / "chat" / "train.jsonl")[:20]
    memorise.write_text("".join(json.dumps(r) + "\n" for r in chat), encoding="utf-8")
    curves = {}
    for method in ("full", "lora"):
        log(f"memorisation: {method}")
        curves[method] = run_isolated(train_once, str(folder), str(memorise), str(memorise), method, 0, args.threads, {
            "train": {"epochs": 300, "eval_every": 10, "metric": "exact_match", "early_stopping": {"target": 100}},
            "generation": {"max_new_tokens": 64}})  # the longest answer is 44 tokens with this tokenizer
        log(json.dumps(curves[method]["curve"]))
    return curves


if __name__ == "__main__":
    main()
