"""What one training step of all-MiniLM-L6-v2 keeps for its backward pass, with and without
`train.recompute_elementwise` (slingshot.recompute), and what rebuilding costs in time.

    .venv/bin/python bench/activation_memory.py > bench/results/activation_memory.json
    .venv/bin/python bench/activation_memory.py --rounds 2 --precision fp32     # quicker

For each batch shape of 1,024 tokens (64 x 16 ... 8 x 128) and each precision (fp32; bf16 autocast, which runs
on any CPU but is fast only with AVX512-BF16/AMX), the model in training mode with eager attention, a frozen
word-embedding table (the classification defaults) and slingshot's CPU dropout: the bytes of the distinct
storages the forward pass keeps (saved-tensor hooks; the linear weights the matmuls keep included), whether the
gradients are bitwise equal, and the median time of `--rounds` interleaved rounds of forward + backward over a
mix of SST-2-like shapes (fewer is noisier: this is a 2-core shared machine). Prints JSON.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import MODEL_NAME, emit, log, machine_info

SHAPES = [(64, 16), (32, 32), (16, 64), (8, 128)]
MIX = [(64, 16), (48, 21), (32, 32), (24, 42), (16, 64)] * 2  # one timing round: ten batches of ~1,024 tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved timing rounds per setting")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: physical cores)")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForSequenceClassification

    from slingshot import recompute
    from slingshot.dropout import fast_cpu_dropout
    from slingshot.models import resolve_model
    from slingshot.train import default_threads

    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    path = resolve_model(MODEL_NAME).path
    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=2, attn_implementation="eager")
    model.get_input_embeddings().weight.requires_grad_(False)
    model.train()

    def step(batch: int, length: int, use: bool, dtype, kept: dict | None = None, seed: int = 0):
        def pack(tensor):
            out = recompute._pack(tensor) if use else tensor
            if kept is not None:
                for held in out.inputs if isinstance(out, recompute._Recompute) else (out,):
                    storage = held.untyped_storage()
                    kept[storage.data_ptr()] = storage.nbytes()
            return out

        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(1000, 20000, (batch, length), generator=generator)
        labels = torch.randint(0, 2, (batch,), generator=generator)
        torch.manual_seed(seed)
        with fast_cpu_dropout(), recompute.recompute_cheap_activations(use), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"), \
                torch.autograd.graph.saved_tensors_hooks(pack, recompute._unpack):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        torch.nn.functional.cross_entropy(logits.float(), labels).backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad(set_to_none=True)
        return grads

    def timed_round(use: bool, dtype) -> float:
        started = time.perf_counter()
        for index, (batch, length) in enumerate(MIX):
            step(batch, length, use, dtype, seed=index)
        return time.perf_counter() - started

    results = []
    for dtype in (["fp32", "bf16"] if args.precision == "both" else [args.precision]):
        shapes = []
        for batch, length in SHAPES:
            kept_off, kept_on = {}, {}
            plain = step(batch, length, False, dtype, kept_off)
            rebuilt = step(batch, length, True, dtype, kept_on)
            equal = all(torch.equal(a, b) for a, b in zip(plain, rebuilt))
            shapes.append({"batch": batch, "tokens": length, "kept_mb_off": round(sum(kept_off.values()) / 1e6, 1),
                           "kept_mb_on": round(sum(kept_on.values()) / 1e6, 1), "gradients_bitwise_equal": equal})
            log(dtype, shapes[-1])
        timed_round(False, dtype)  # warm-up: kernels and allocator pools
        off, on = [], []
        for _ in range(args.rounds):
            off.append(timed_round(False, dtype))
            on.append(timed_round(True, dtype))
        timing = {"rounds": args.rounds, "median_s_off": round(statistics.median(off), 3),
                  "median_s_on": round(statistics.median(on), 3),
                  "median_ratio": round(statistics.median(on) / statistics.median(off), 3),
                  "min_ratio": round(min(on) / min(off), 3)}
        log(dtype, timing)
        results.append({"precision": dtype, "shapes": shapes, "timing": timing})
    emit({"benchmark": "activation_memory", "model": MODEL_NAME, "threads": threads, "results": results,
          "machine": machine_info(threads)})


if __name__ == "__main__":
    main()
