"""The one training loop, on Accelerate, for every task. Read it top to bottom: it runs in this order.

    recipe -> data -> model -> run directory -> batches -> optimizer/schedule -> (resume) -> loop -> best model -> save

The same code runs on a CPU, one GPU, or several processes under `accelerate launch`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from slingshot.allocator import preloaded
from slingshot.batching import TokenBudgetBatchSampler, padding_fraction, token_counts
from slingshot.data import load_data
from slingshot.dropout import fast_cpu_dropout
from slingshot.errors import RecipeError, RunDirError
from slingshot.inference import EVAL_TOKENS_PER_BATCH, FORWARD_COLUMNS, forward_logits
from slingshot.judge import judge_records
from slingshot.models import count_parameters, load_tokenizer, resolve_model
from slingshot.progress import TrainProgress
from slingshot.recipe import Recipe
from slingshot.recompute import recompute_cheap_activations
from slingshot.rundir import (
    ResourceMeter,
    RunDir,
    append_jsonl,
    estimated_cost_usd,
    memory_figures,
    open_run,
    truncate_log,
    versions,
    write_json,
    write_jsonl,
    write_text,
)
from slingshot.similarity import score_records
from slingshot.tasks import GeneratingTask, get_task
from slingshot.tracking import check_trackers, numeric, start_trackers, tracking_dir


@dataclass
class TrainState:
    """Counters saved in every checkpoint, so that `--resume` continues exactly where the run stopped."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of this epoch already consumed by completed optimizer steps
    best_score: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    examples_seen: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    train_time_s: float = 0.0  # training-loop time (batches, forward, backward, step), no eval or saving
    wall_time_s: float = 0.0  # whole-run wall time, across resumes
    evals: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class TrainResult:
    run: RunDir
    metrics: dict[str, Any]
    summary: dict[str, Any]
    interrupted: bool = False


def default_threads() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def limit_kernel_caches() -> None:
    """Cap the two per-shape caches behind bf16 matmuls on a CPU; token-budget batches come in dozens of shapes.

    - oneDNN's primitive cache keeps a compiled kernel per input shape, up to 1,024. Capped at 64: ~250 MB less
      peak RSS on 3,000 SST-2 rows (400 MB on all 67k) for ~5% of speed, same accuracy (measured, A/B twice).
      At 16 (main job with a frozen token table and eager attention, A/B twice, idle): 969-970 instead of 992-995
      MB for 3,781-3,833 instead of 3,805-3,859 real tokens/s; at 4 it ran a third slower.
    - PyTorch's ideep layer keeps its own LRU cache of matmul objects per shape (`LRU_CACHE_CAPACITY`, default
      1,024), each holding ~2.5 MB of buffers: live memory grew by ~250 MB over 100 steps of varying shapes.
      Capped at 16 on the main job (8,000 rows, tcmalloc, idle): peak RSS 1,160 instead of 1,321 MB and 3,910
      instead of 3,690 real tokens/s; caps of 1 and 64 measured the same as 16, accuracy unchanged.

    Both are read when oneDNN first runs, so this must come before the first matmul; a user's values win.
    """
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")
    os.environ.setdefault("LRU_CACHE_CAPACITY", "16")


# bf16 autocast on a CPU only where its matmuls are at least this much faster than fp32's, measured (below).
BF16_MIN_SPEEDUP = 1.2


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether bf16 matmuls run faster than fp32 ones on this CPU: AVX512-BF16 or AMX, and then a measurement.

    The instructions alone do not say it. A 2-core AMD EPYC with AVX512-BF16 ran a 2048x2048 matmul at 412 GFLOP/s
    in bf16 and 181 in fp32, and trained all-MiniLM-L6-v2 1.42x faster in bf16; a 2-core Intel Xeon (Emerald
    Rapids, AVX512-BF16 reported, AMX hidden by its hypervisor) ran the same matmuls at 0.58x fp32's rate and
    trained 0.67x as fast (1,372-1,421 against 2,068-2,090 real tokens/s, 8,000 SST-2 rows, the same accuracy).
    So the answer is measured once per process (bf16_matmul_speedup, about 0.1 s) and cached.
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private torch.cpu helpers; absent = no
    if not any(getattr(torch.cpu, name, lambda: False)() for name in checks):
        return False
    return bf16_matmul_speedup() >= BF16_MIN_SPEEDUP


def bf16_matmul_speedup(size: int = 768, rounds: int = 5) -> float:
    """bf16 over fp32 matmul speed on this CPU with the current threads: the median ratio of `rounds` interleaved
    pairs of size x size matmuls (interleaved, so that a busy moment of a shared machine slows both alike). Uses
    its own generator: the global RNG, seeded for the run, is left as it was. Caps the kernel caches first
    (limit_kernel_caches): `slingshot run` measures while planning, and these may be the process's first matmuls."""
    limit_kernel_caches()
    generator = torch.Generator().manual_seed(0)
    fp32 = [torch.randn(size, size, generator=generator) for _ in range(2)]
    bf16 = [t.to(torch.bfloat16) for t in fp32]

    def seconds(a: torch.Tensor, b: torch.Tensor) -> float:
        began = time.perf_counter()
        torch.mm(a, b)
        return time.perf_counter() - began

    seconds(*fp32), seconds(*bf16)  # warm-up: the first call of each picks and builds its kernel
    ratios = sorted(seconds(*fp32) / seconds(*bf16) for _ in range(rounds))
    return ratios[len(ratios) // 2]


ATTENTION_DROPOUT_FIELDS = ("attention_probs_dropout_prob", "attn_pdrop", "attention_dropout")


def attention_dropout(config: Any) -> float:
    """The probability of dropping attention weights in training, under the names model families use (0 when the
    family names it otherwise: those then keep sdpa)."""
    for name in ATTENTION_DROPOUT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    return 0.0


def training_attention(recipe: Recipe, model: torch.nn.Module, device: torch.device) -> str | None:
    """The attention kernel to train with, or None to keep the model's own (see train.attention).

    On a CPU, SDPA with dropout on the attention weights cannot use its fused kernel and takes the math path,
    which keeps fp32 copies of the scores and an expanded mask. all-MiniLM-L6-v2, 2 threads, bf16, 1,024-token
    batches: eager kept 134-168 MB of activations against 150-190 MB and stepped in 178-207 ms against 177-221 ms
    (16 to 64 tokens per text; 212 vs 244 MB and 249 vs 259 ms at 128, 300 vs 350 MB and 344 vs 369 ms at 384).
    Without attention dropout SDPA's fused kernel keeps less than eager (a Qwen2-shaped decoder), so auto keeps it.
    """
    owner = attention_owner(model)
    if owner is None:
        return None
    config, current = owner.config, owner.config._attn_implementation
    choice = recipe.train.attention
    if choice == "auto":
        if device.type != "cpu" or attention_dropout(config) == 0:
            return None
        choice = "eager"
    return choice if choice != current else None


def attention_owner(model: torch.nn.Module) -> Any:
    """The transformers model inside `model` whose attention kernel can be switched (the model itself, a PEFT
    wrapper's base, a few-shot classifier's body), or None."""
    for module in model.modules():
        if callable(getattr(module, "set_attn_implementation", None)) and \
                getattr(getattr(module, "config", None), "_attn_implementation", None) is not None:
            return module
    return None


def set_attention(model: torch.nn.Module, kernel: str | None) -> None:
    """Switch the attention kernel of the transformers model inside `model` (None, or no such model: nothing)."""
    owner = attention_owner(model)
    if kernel is not None and owner is not None and owner.config._attn_implementation != kernel:
        owner.set_attn_implementation(kernel)


def attention_in_use(model: torch.nn.Module) -> str | None:
    """The attention kernel of the transformers model inside `model`, or None when there is none."""
    owner = attention_owner(model)
    return None if owner is None else owner.config._attn_implementation


@contextlib.contextmanager
def attention_kernel(model: torch.nn.Module, kernel: str | None) -> Iterator[None]:
    """Run the block with the model's attention switched to `kernel` (None: unchanged), then switch back."""
    previous = attention_in_use(model)
    set_attention(model, kernel)
    try:
        yield
    finally:
        set_attention(model, previous)


def autocast_dtype(recipe: Recipe, device: torch.device) -> torch.dtype | None:
    """bf16 autocast, or None for fp32.

    `auto` picks bf16 on a GPU that supports it and on a CPU whose bf16 matmuls measure faster than fp32's
    (cpu_has_fast_bf16). Measured on such a 2-core CPU (AMD EPYC, AVX512-BF16) with all-MiniLM-L6-v2 on 8,000
    SST-2 rows, 3 seeds: 1.42x real tokens/s (3,640 vs 2,566), dev accuracy 86.0% vs 86.2% (per-seed spread 0.5
    points). Peak RSS with the kernel caches capped (limit_kernel_caches; +210 MB before): +33 MB under tcmalloc,
    -205 MB under glibc (fp32's activations are twice the size). Elsewhere bf16 is emulated or slower, and `auto`
    stays fp32.
    """
    precision = recipe.train.precision
    if precision == "fp32":
        return None
    bf16_ok = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_fast_bf16()
    if precision == "bf16":
        if device.type == "cuda" and not bf16_ok:
            raise RecipeError("train.precision: bf16 is not supported by this GPU", "use precision: fp32")
        return torch.bfloat16
    return torch.bfloat16 if bf16_ok else None


def precision_name(amp_dtype: torch.dtype | None) -> str:
    return "bf16" if amp_dtype is not None else "fp32"


def checkpoint_precision(run: RunDir, current: torch.dtype | None) -> torch.dtype | None:
    """The autocast dtype the run's last checkpoint was trained in (its slingshot_state.json), so that a resumed
    run repeats the uninterrupted one even where train.precision auto would now decide otherwise; `current`
    when the checkpoint does not say (written before it did) or when this device cannot run bf16."""
    import json

    try:
        saved = json.loads((run.last_checkpoint / "slingshot_state.json").read_text(encoding="utf-8"))["precision"]
    except (OSError, ValueError, KeyError, TypeError):
        return current
    if saved == "bf16" and (current is not None or not torch.cuda.is_available()):
        return torch.bfloat16
    return None if saved == "fp32" else current


def set_mmap_threshold(size_bytes: int) -> bool:
    """Serve heap blocks above `size_bytes` with mmap, returned to the OS on free (glibc's M_MMAP_THRESHOLD).

    glibc's own threshold starts at 128 KB but rises (up to 32 MB) each time a large block is freed, after which
    activations and gradients of every batch shape are carved from the heap, whose freed holes stay resident.
    Fixing it stops the drift: peak RSS of all-MiniLM-L6-v2 on 1,500 SST-2 rows fell from 1.40 to 1.06 GB here.
    A value in the environment (MALLOC_MMAP_THRESHOLD_) wins. Returns whether the setting took effect.
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_mmap_threshold = -3
        return bool(libc.mallopt(m_mmap_threshold, size_bytes))
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False


LAYER_NAME = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")


def layer_depth(name: str, layers: int) -> int:
    """Depth of a parameter from its name: 0 embeddings, 1..layers the numbered blocks, layers + 1 the rest (head,
    pooler, final norm). Covers BERT (`encoder.layer.N`), GPT-2 (`h.N`), Llama (`layers.N`), T5 (`block.N`)."""
    match = LAYER_NAME.search(name)
    if match:
        return int(match.group(1)) + 1
    if "embed" in name or ".wte." in name or ".wpe." in name:
        return 0
    return layers + 1


def decay_groups(model: torch.nn.Module, weight_decay: float, lr: float,
                 layer_decay: float | None = None) -> list[dict[str, Any]]:
    """AdamW parameter groups. Weight decay on matrices only: biases and LayerNorm weights (1-D) are not decayed
    (BERT's recipe). With layer_decay, each group also carries lr x layer_decay^(distance from the top), so the
    pretrained bottom layers move least (layer-wise learning-rate decay, as in ELECTRA and BEiT fine-tuning)."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    indices = [int(m.group(1)) for name, _ in named if (m := LAYER_NAME.search(name))]
    layers = max(indices) + 1 if indices else 0
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, parameter in named:
        depth = layer_depth(name, layers) if layer_decay is not None else layers + 1
        decayed = parameter.ndim >= 2
        group = groups.setdefault((depth, decayed), {
            "params": [], "weight_decay": weight_decay if decayed else 0.0,
            "lr": lr * (layer_decay ** (layers + 1 - depth) if layer_decay is not None else 1.0),
        })
        group["params"].append(parameter)
    return [groups[key] for key in sorted(groups)]


def train(
    recipe: Recipe,
    *,
    overwrite: bool = False,
    resume: bool = False,
    stop_after_steps: int | None = None,
    show_progress: bool = True,
) -> TrainResult:
    """Fine-tune the recipe's model on its data into `<output.dir>/<name>/`.

    stop_after_steps simulates an interruption: the run checkpoints after that many optimizer steps and returns
    (interrupted=True), as it does on Ctrl-C. Raises SlingshotError for any fault in the recipe, data or run folder,
    before anything is written.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    meter = ResourceMeter()
    limit_kernel_caches()
    if recipe.train.mmap_threshold_kb is not None:
        set_mmap_threshold(recipe.train.mmap_threshold_kb * 1024)
    check_trackers(recipe)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), step_scheduler_with_optimizer=False,
                              log_with=list(recipe.track.to) or None,
                              project_dir=str(tracking_dir(recipe)) if recipe.track.to else None)
    device = accelerator.device
    if device.type == "cpu":
        torch.set_num_threads(recipe.train.threads or default_threads())
    set_seed(recipe.train.seed)
    amp_dtype = autocast_dtype(recipe, device)
    if resume and recipe.train.precision == "auto":  # auto measures the machine: continue as the run started
        amp_dtype = checkpoint_precision(RunDir(Path(recipe.output.dir) / (recipe.name or "run")), amp_dtype)

    # Everything that can fail on the user's input happens before the run directory is touched.
    task = get_task(recipe.task, recipe)
    data = load_data(recipe)
    resolved = resolve_model(recipe.model.name, recipe.model.revision)
    tokenizer = load_tokenizer(resolved.path)
    labelled_examples = len(data.splits["train"])  # before made-up ones (fewshot.label_template)
    if recipe.train.method == "fewshot" and recipe.train.fewshot.label_template:
        from slingshot.tasks.fewshot import add_label_examples

        data.splits["train"] = add_label_examples(data.splits["train"], data.label_names, recipe.train.fewshot)
    encoded = task.prepare(data.splits, tokenizer, recipe)
    distilled: dict[str, Any] | None = None
    if recipe.train.distill.teachers:  # soft targets from the teachers, once, before anything is written
        from slingshot.distill import add_teacher_column, teacher_targets

        started = time.perf_counter()
        targets = teacher_targets(recipe, task, data.splits["train"], encoded["train"], tokenizer, data.label_names,
                                  device, amp_dtype)
        encoded["train"] = add_teacher_column(encoded["train"], targets)
        distilled = {**recipe.train.distill.model_dump(), "teacher_time_s": round(time.perf_counter() - started, 2)}
    model = task.build_model(resolved, recipe, data.label_names)
    if recipe.freezes_embeddings():  # before counting, so that the summary's trainable parameters leave them out
        model.get_input_embeddings().weight.requires_grad_(False)
    if recipe.train.gradient_checkpointing and recipe.train.method != "qlora":  # qlora turns it on when building
        # non-reentrant checkpointing also works when the inputs need no gradient (frozen embeddings under LoRA);
        # later transformers 5 releases renamed it activation checkpointing and warn on the old name
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    # GELU, LayerNorm and attention-dropout outputs rebuilt in the backward pass (slingshot.recompute); gradient
    # checkpointing (qlora turns it on) keeps none of them, so nothing is left to save there
    recompute = (recipe.train.recompute_elementwise and not recipe.train.gradient_checkpointing
                 and recipe.train.method != "qlora")
    if task.text_answers and recipe.similarity.enabled:
        resolve_model(recipe.similarity.model)  # fail now, not after training, when the embedding model is missing
    parameters = count_parameters(model)
    # One process decides about and prepares the run directory; the others wait, then use it.
    if accelerator.is_main_process:
        run = open_run(recipe.output.dir, recipe.name or "run", overwrite=overwrite, resume=resume)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        run = RunDir(Path(recipe.output.dir) / (recipe.name or "run"))
    if resume:
        check_same_recipe(run, recipe, base_parameters(model))
    # atomic, and after every process has read the saved recipe: another process resuming may be reading it now
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_text(run.recipe, recipe.to_yaml())
    tracking = start_trackers(accelerator, recipe, run.path.name)

    # Batches: length-sorted pools under a token budget, reshuffled every epoch from seed + epoch.
    train_split = encoded["train"]
    # a small training set gets smaller batches, so that it still gets enough optimizer steps (train.min_steps)
    token_budget = recipe.batch_tokens(train_split["length"], accelerator.num_processes)
    sampler = TokenBudgetBatchSampler(
        train_split["length"], token_budget, recipe.train.loop_max_batch_size, shuffle=True, seed=recipe.train.seed,
    )
    collate = task.collator(tokenizer)
    model_columns = [c for c in task.batch_columns if c in train_split.column_names]
    # Its own generator: creating an iterator must not draw from the global RNG, or a resumed run's dropout
    # masks would drift from an uninterrupted one.
    loader = DataLoader(train_split.select_columns(model_columns), batch_sampler=sampler, collate_fn=collate,
                        generator=torch.Generator().manual_seed(recipe.train.seed))

    # eager attention for the training steps; evaluation switches back to the model's own (sdpa: faster inference)
    inference_attention = attention_in_use(model)
    set_attention(model, training_attention(recipe, model, device))
    train_attention = attention_in_use(model)  # what the steps use: a model that cannot switch keeps its own
    # fused: one kernel per step and no full-size temporaries (foreach AdamW briefly holds extra copies)
    peak_lr = recipe.learning_rate(parameters=base_parameters(model))
    optimizer = torch.optim.AdamW(decay_groups(model, recipe.train.weight_decay, peak_lr, recipe.train.layer_decay),
                                  lr=peak_lr, fused=device.type in {"cpu", "cuda"})
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    accum = recipe.train.grad_accum
    steps_per_epoch = math.ceil(len(loader) / accum)
    # a small training set makes more passes when smaller batches alone leave it short of train.min_steps
    total_steps = max(1, math.ceil(steps_per_epoch * recipe.train.loop_epochs), recipe.min_train_steps() or 0)
    schedule = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[recipe.train.schedule]
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=round(recipe.train.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    scheduler = accelerator.prepare(scheduler)

    state = TrainState()
    accelerator.register_for_checkpointing(state)
    # The averaged weights are what evaluation scores and what is saved: the raw weights only train.
    ema = None
    if recipe.train.ema is not None:
        from torch.optim.swa_utils import AveragedModel

        ema = AveragedModel(accelerator.unwrap_model(model), multi_avg_fn=ema_update(recipe.train.ema),
                            use_buffers=True)
        accelerator.register_for_checkpointing(ema)

    def scored_model() -> torch.nn.Module:
        return ema.module if ema is not None else accelerator.unwrap_model(model)
    if resume:
        accelerator.load_state(str(run.last_checkpoint))
        if accelerator.is_main_process:  # the one process that writes the log
            truncate_log(run.train_log, state.step)

    best_is_max = recipe.metric_greater_is_better
    metric_name = recipe.best_metric
    eval_split = encoded["eval"]
    latest_eval: dict[str, Any] = {}  # the last evaluation's step and result (metrics and outputs)
    # Evaluations between steps take batches no larger than the training ones: their activations then fit the blocks
    # the training steps freed, where 4,096-token batches asked the allocator for larger ones and the heap grew at
    # evaluations (full SST-2: 26-34 MiB off the peak; the README, "Training in about 1 GB").
    eval_budget = min(EVAL_TOKENS_PER_BATCH, recipe.train.tokens_per_batch)

    def evaluate_now() -> dict[str, Any]:
        # A head the loss does not train (few-shot: a classifier on the embeddings) is fitted to the body as it
        # is now, so each evaluation, and the best checkpoint, scores the model that would be saved.
        with attention_kernel(scored_model(), inference_attention):
            task.fit_head(scored_model(), encoded, collate, recipe, device, amp_dtype)
            result = evaluate_split(task, scored_model(), eval_split, collate, data.label_names, device, amp_dtype,
                                    tokens_per_batch=eval_budget)
        latest_eval.update(step=state.step, result=result)
        return result["metrics"]

    def save_checkpoint() -> None:
        # Written beside the old one and renamed, so a crash while saving keeps the previous checkpoint.
        # Every process writes its own RNG state into the folder (save_state has no barrier at its end): the main
        # process renames it only once all have written, or another process's file lands in a folder just moved
        # (a crash on a slower process, or a checkpoint without its RNG state).
        staging = run.checkpoints / "last.tmp"
        accelerator.save_state(str(staging))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json(staging / "slingshot_state.json", {"step": state.step, "precision": precision_name(amp_dtype)})
            if run.last_checkpoint.exists():
                shutil.rmtree(run.last_checkpoint)
            os.replace(staging, run.last_checkpoint)
        accelerator.wait_for_everyone()  # nobody starts the next checkpoint, or returns, before the rename

    def save_best() -> None:
        from safetensors.torch import save_model

        if accelerator.is_main_process:
            run.best_checkpoint.mkdir(parents=True, exist_ok=True)
            save_model(scored_model(), str(run.best_checkpoint / "model.safetensors"))

    progress = TrainProgress(total_steps, enabled=show_progress and accelerator.is_main_process, start_step=state.step)
    if token_budget < recipe.train.tokens_per_batch or total_steps > steps_per_epoch * recipe.train.loop_epochs:
        progress.note(f"small training set: batches of up to {token_budget} tokens (train.tokens_per_batch "
                      f"{recipe.train.tokens_per_batch}) and {total_steps / steps_per_epoch:.3g} passes over the data, "
                      f"for {total_steps} optimizer steps (train.min_steps)")
    interrupted = False
    epochs = math.ceil(total_steps / steps_per_epoch)
    session_start = time.perf_counter()
    mark = session_start  # end of the last step, evaluation or save: train_time_s counts from here
    model.train()
    try:
        # dropout masks drawn 4x faster on a CPU (slingshot.dropout: PyTorch's sampler took 7.8% of a step)
        with progress, fast_cpu_dropout(device.type == "cpu"):
            while state.step < total_steps and state.epoch < epochs:
                loader.set_epoch(state.epoch)
                batches_this_epoch = len(loader)
                batches = accelerator.skip_first_batches(loader, state.batch_in_epoch) if state.batch_in_epoch else loader
                consumed = state.batch_in_epoch
                window: list[dict[str, torch.Tensor]] = []
                stop = False
                for batch in batches:
                    window.append(batch)
                    consumed += 1
                    if len(window) < accum and consumed < batches_this_epoch:
                        continue
                    # Each item (example, its weight, or an answer token) counts once, however the window is cut
                    # into batches: the summed loss is divided by the items in the whole window, not per batch.
                    window_examples = sum(int((b["labels"] if "labels" in b else b["input_ids"]).shape[0])
                                          for b in window)  # examples (pairs for fewshot, windows for QA)
                    window_items = max(sum(task.loss_items(b) for b in window), 1)
                    batch_tokens = [token_counts(b) for b in window]  # (real, padded) per batch
                    window_real = sum(real for real, _ in batch_tokens)
                    window_padded = sum(padded for _, padded in batch_tokens)
                    loss_scale = 1 / window_items
                    if accelerator.num_processes > 1:
                        # Across processes too: DDP averages gradients, so dividing by the items of all
                        # processes' windows, times the process count, weighs every item the same. The same
                        # reduction makes the counters global (and equal in every process's checkpoint).
                        counts = accelerator.reduce(torch.tensor(
                            [window_items, window_examples, window_real, window_padded], dtype=torch.float64,
                            device=device), reduction="sum")
                        global_items, window_examples, window_real, window_padded = counts.tolist()
                        loss_scale = accelerator.num_processes / max(global_items, 1)
                    state.examples_seen += int(window_examples)
                    state.real_tokens += int(window_real)
                    state.padded_tokens += int(window_padded)
                    loss_total = 0.0
                    for index, micro in enumerate(window):
                        sync = index == len(window) - 1
                        with accelerator.no_sync(model) if not sync else contextlib.nullcontext():
                            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None), \
                                    recompute_cheap_activations(recompute):
                                loss_sum, _ = task.loss(model, micro)
                            accelerator.backward(loss_sum * loss_scale)
                        loss_total += float(loss_sum.detach())
                    if recipe.train.max_grad_norm is not None:
                        accelerator.clip_grad_norm_(model.parameters(), recipe.train.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    if ema is not None:
                        ema.update_parameters(accelerator.unwrap_model(model))
                    window = []
                    state.step += 1
                    state.batch_in_epoch = consumed
                    now = time.perf_counter()
                    state.train_time_s += now - mark
                    mark = now

                    loss_value = loss_total / window_items
                    lr = scheduler.get_last_lr()[0]
                    tokens_per_s = state.real_tokens / max(state.train_time_s, 1e-9)
                    progress.step(state.step, loss_value, lr, tokens_per_s, state.epoch)
                    if state.step % recipe.train.log_every == 0 and tracking:
                        accelerator.log({"train/loss": loss_value, "train/lr": lr,
                                         "train/real_tokens_per_s": tokens_per_s}, step=state.step)
                    if state.step % recipe.train.log_every == 0 and accelerator.is_main_process:
                        append_jsonl(run.train_log, {
                            "step": state.step, "epoch": round(state.epoch + consumed / batches_this_epoch, 4),
                            "loss": round(loss_value, 6), "lr": lr, "real_tokens_per_s": round(tokens_per_s, 1),
                            "elapsed_s": round(state.wall_time_s + time.perf_counter() - session_start, 2),
                            **memory_figures(),
                        })

                    end_of_epoch = consumed >= batches_this_epoch
                    if end_of_epoch:
                        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                    last_step = state.step >= total_steps
                    due = recipe.train.eval_every is not None and state.step % recipe.train.eval_every == 0
                    if due or last_step or (end_of_epoch and recipe.train.eval_every is None):
                        metrics = evaluate_now()
                        score = float(metrics[metric_name])
                        improved = state.best_score is None or (
                            score > state.best_score + recipe.train.early_stopping.min_delta if best_is_max
                            else score < state.best_score - recipe.train.early_stopping.min_delta
                        )
                        if improved:
                            state.best_score, state.best_step = score, state.step
                            state.evals_without_improvement = 0
                        else:
                            state.evals_without_improvement += 1
                        epoch_position = state.epoch + (state.batch_in_epoch / batches_this_epoch)
                        entry = {"step": state.step, "epoch": round(epoch_position, 4), metric_name: score,
                                 "loss": metrics["loss"], "best": improved,
                                 "elapsed_s": round(state.wall_time_s + time.perf_counter() - session_start, 2)}
                        state.evals.append(entry)
                        progress.evaluation(entry, metric_name)
                        if accelerator.is_main_process:
                            append_jsonl(run.train_log, {"step": state.step, "elapsed_s": entry["elapsed_s"],
                                                         "eval": _scalars(metrics)})
                        if tracking:
                            accelerator.log(numeric("eval", _scalars(metrics)), step=state.step)
                        patience = recipe.train.early_stopping.patience
                        target = recipe.train.early_stopping.target
                        if patience is not None and state.evals_without_improvement >= patience:
                            progress.note(f"early stop: no {metric_name} improvement in {patience} evaluations")
                            stop = True
                        if target is not None and (score >= target if best_is_max else score <= target):
                            progress.note(f"stop: {metric_name} {score:.4f} reached the target {target}")
                            stop = True
                        if improved and not (stop or last_step):
                            save_best()  # weights that are final anyway stay in memory (see below)
                    every = recipe.train.checkpoint_every
                    if (end_of_epoch or (every and state.step % every == 0)) and not (stop or last_step):
                        state.wall_time_s += time.perf_counter() - session_start
                        session_start = time.perf_counter()
                        save_checkpoint()
                    mark = time.perf_counter()
                    if stop_after_steps is not None and state.step >= stop_after_steps and not (stop or last_step):
                        raise KeyboardInterrupt
                    if stop or last_step or end_of_epoch:
                        break
                if stop:
                    break
    except KeyboardInterrupt:
        # Checkpoint the last completed optimizer step; half-accumulated gradients are dropped.
        optimizer.zero_grad(set_to_none=True)
        state.wall_time_s += time.perf_counter() - session_start
        save_checkpoint()
        interrupted = True
    if interrupted:
        if tracking:
            accelerator.end_training()
        return TrainResult(run, {}, {"optimizer_steps": state.step, "total_steps": total_steps}, interrupted=True)

    # The best evaluation's weights become the model; finished runs keep no optimizer state. When the last
    # evaluation was the best (one epoch, or still improving), those weights are the ones in memory: no round trip
    # through the disk, and its scores serve as the final ones (a few-shot run spent ~7% of its time on both).
    state.wall_time_s += time.perf_counter() - session_start
    # AdamW's moments (twice the trainable weights) are done with: freed now, the final evaluation and the save
    # reuse that memory instead of raising the run's peak RSS on top of it
    optimizer.state.clear()
    unwrapped = accelerator.unwrap_model(model)
    set_attention(unwrapped, inference_attention)
    best_is_last = state.best_step is not None and state.best_step == state.step
    accelerator.wait_for_everyone()  # the main process may still be writing the best weights
    if best_is_last:
        if ema is not None:
            unwrapped.load_state_dict(ema.module.state_dict())
    elif run.best_checkpoint.is_dir():
        load_trained_weights(unwrapped, run.best_checkpoint / "model.safetensors")
    accelerator.wait_for_everyone()  # every process has the best weights before the checkpoints go
    metrics: dict[str, Any] = {"best_step": state.best_step, "best_metric": metric_name, "evaluations": state.evals}
    if accelerator.is_main_process:
        if best_is_last and latest_eval.get("step") == state.step:
            final_eval = latest_eval["result"]
        else:
            final_eval = evaluate_split(task, unwrapped, encoded["eval"], collate, data.label_names, device,
                                        amp_dtype)
        metrics["eval"] = final_split_metrics(task, recipe, run, "eval", data.splits["eval"], final_eval,
                                              data.label_names)
        # test and gold (human labels kept apart from teacher labels) are scored once, after the model is chosen
        for split in ("test", "gold"):
            if split in encoded:
                final = evaluate_split(task, unwrapped, encoded[split], collate, data.label_names, device, amp_dtype)
                metrics[split] = final_split_metrics(task, recipe, run, split, data.splits[split], final,
                                                     data.label_names)
        task.save(unwrapped, tokenizer, run.model, adapter_path=run.adapter)
        write_json(run.metrics, metrics)
        shutil.rmtree(run.checkpoints, ignore_errors=True)

    figures = meter.figures()
    lengths = train_split["length"]
    summary = {
        "run": str(run.path),
        "task": recipe.task,
        "model": resolved.name,
        "model_route": resolved.route,
        "method": recipe.train.method,
        "device": str(device),
        "processes": accelerator.num_processes,
        "threads": torch.get_num_threads(),
        "precision": precision_name(amp_dtype),
        "attention": train_attention,  # the kernel the training steps used (None: not a transformers model)
        "frozen_embeddings": recipe.freezes_embeddings(),
        "pooling": (getattr(unwrapped.config, "slingshot_pooling", "cls")  # model.pooling resolved
                    if recipe.task in ("classification", "regression") and recipe.train.method != "fewshot" else None),
        "learning_rate": peak_lr,  # train.lr resolved (auto: by method and task)
        "parameters": parameters,
        "train_examples": labelled_examples,  # examples, not pairs, for method fewshot
        "template_examples": len(data.splits["train"]) - labelled_examples,  # fewshot.label_template's
        "train_rows": len(train_split),  # what batches are cut from: pairs, QA windows, packed sequences
        "eval_examples": len(eval_split),
        "skipped_empty_texts": {split: s.count for split, s in data.skipped.items() if s.count and not s.reasons},
        "skipped_examples": {split: s.reasons for split, s in data.skipped.items() if s.reasons},
        "labels": data.provenance,  # where the training labels came from (teacher, filtering, weighting, gold)
        "distill": distilled,  # teachers, alpha, temperature, and the time their forward passes took
        "optimizer_steps": state.step,
        "epochs_completed": state.epoch,
        "wall_time_s": round(state.wall_time_s, 2),
        "train_time_s": round(state.train_time_s, 2),
        "cpu_time_s": figures["cpu_time_s"],
        "peak_rss_mb": figures["peak_rss_mb"],
        "allocator": preloaded() or "system",  # the command preloads tcmalloc/jemalloc when installed
        "examples_seen": state.examples_seen,
        "real_tokens": state.real_tokens,
        "padded_tokens": state.padded_tokens,
        "real_tokens_per_s": round(state.real_tokens / max(state.train_time_s, 1e-9), 1),
        "padding_fraction": round(1 - state.real_tokens / max(state.padded_tokens, 1), 4),
        "padding_fraction_epoch0": round(padding_fraction(sampler.batches, lengths), 4),
        "tokens_per_batch": token_budget,  # below train.tokens_per_batch for a small training set (train.min_steps)
        "useful_gflop_per_s": round(6 * parameters["non_embedding"] * state.real_tokens
                                    / max(state.train_time_s, 1e-9) / 1e9, 2),
        "price_per_hour_usd": recipe.output.price_per_hour_usd,
        "estimated_cost_usd": estimated_cost_usd(state.wall_time_s, recipe.output.price_per_hour_usd),
        "versions": versions(),
    }
    if accelerator.is_main_process:
        write_json(run.summary, summary)
    if tracking:
        final = numeric("summary", summary) | numeric("final_eval", _scalars(metrics.get("eval", {})))
        accelerator.log(final, step=state.step)
        accelerator.end_training()
    return TrainResult(run, metrics, summary)


def ema_update(decay: float):
    """The update of an exponential moving average of the weights, with the decay warmed up; integer tensors copied.

    Warm-up: update n (1, 2, ...) uses min(decay, (1 + n) / (10 + n)), TensorFlow's `num_updates` rule (timm and
    diffusers warm up alike). PyTorch's `get_ema_multi_avg_fn` uses the full decay from the first step, so the
    starting weights, randomly initialised head included, keep 0.999^n of the average: 39% after PolicyQA's 942
    steps, 8% after 2,528 on full SST-2. With the warm-up their share falls like (1/n)^9.

    Integer buffers are copied: PyTorch's update takes them through `ema * decay + current * (1 - decay)` and
    truncates, so BERT's position ids [0, 1, 2, ...] became [0, 1, 2, 2, 4, 5, 5, 6] after three updates at 0.9
    and sank towards 0; the averaged model that evaluation scored had lost its word order (the saved model had
    not: those buffers are not saved). Ids and masks are not something to average."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], count: torch.Tensor) -> None:
        # AveragedModel calls this once per device and dtype, so a list is all floating point or all not; count is
        # the number of updates before this one (the first, which copies, does not call it)
        if averaged and not (torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0])):
            for kept, now in zip(averaged, current, strict=True):
                kept.copy_(now)
        elif averaged:
            n = int(count)
            torch._foreach_lerp_(averaged, current, 1 - min(decay, (1 + n) / (10 + n)))

    return update


def load_trained_weights(model: torch.nn.Module, path: Path) -> None:
    """Read a checkpoint of `model` (safetensors' save_model) back into it, one tensor at a time, skipping frozen
    parameters: training never changed them.

    pread, not a memory map: the file's mapped pages counted in RSS on top of the heap (+81 MB peak at the end of a
    2,000-row MiniLM run). One tensor at a time and frozen ones skipped: reading the whole file at once (safetensors'
    load_model) raised the main job's peak by 35 MB, most of it the frozen token table read back for nothing.
    """
    from safetensors import safe_open

    frozen = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    state = model.state_dict()  # detached views of the parameters and buffers: copy_ writes into the model
    with safe_open(str(path), framework="pt", backend="pread") as checkpoint:
        names = list(checkpoint.keys())
        unknown = [name for name in names if name not in state]
        if unknown:
            raise RunDirError(f"{path} holds weights the model does not have ({', '.join(unknown[:3])})",
                              "the checkpoint belongs to another model: train again with --overwrite")
        for name in names:
            if name not in frozen:
                state[name].copy_(checkpoint.get_tensor(name))


def base_parameters(model: torch.nn.Module) -> int:
    """Parameters of the model as its checkpoint counts them: through a PEFT wrapper, and 4-bit weights at their
    full count (transformers' num_parameters; a packed 4-bit tensor holds two values per byte)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(base, "num_parameters"):
        return base.num_parameters()
    return sum(p.numel() for p in base.parameters())


# Fields a resumed run may change: they choose the machine's resources, not the computation (a run preempted on
# a 2-core machine continues on a 16-core one).
RESUME_MAY_CHANGE = {"train.threads"}


def check_same_recipe(run: RunDir, recipe: Recipe, parameters: int | None = None) -> None:
    """A resumed run must continue the recipe it started with, or its numbers describe neither. `parameters`: the
    model's count, which train.lr auto depends on."""
    import yaml

    saved = _flatten(yaml.safe_load(run.recipe.read_text(encoding="utf-8")) if run.recipe.is_file() else {})
    # a run started before train.lr had `auto` saved the number auto now resolves to: the same computation
    resolved = {"train.lr": recipe.learning_rate(parameters=parameters)} if recipe.train.lr == "auto" else {}
    changed = sorted(key for key, value in _flatten(recipe.model_dump(mode="json")).items()
                     if saved.get(key) not in (value, resolved.get(key, value)) and key not in RESUME_MAY_CHANGE)
    if changed:
        raise RunDirError(f"recipe changed since run {run.path} started: {', '.join(changed)}",
                          "resume with the original recipe, or start over with --overwrite")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def evaluate_split(task, model, encoded, collate, label_names, device, amp_dtype,
                   tokens_per_batch: int = EVAL_TOKENS_PER_BATCH) -> dict[str, Any]:
    """Metrics (with loss) and outputs of a model on one prepared split."""
    columns = task.forward_columns if isinstance(task, GeneratingTask) else FORWARD_COLUMNS
    logits = forward_logits(model, encoded, collate, forward=task.forward, device=device, autocast_dtype=amp_dtype,
                            columns=columns, tokens_per_batch=tokens_per_batch)
    if isinstance(task, GeneratingTask):  # answers are decoded token by token; the forward pass gave the loss
        outputs = task.generate(model, encoded, collate, device, amp_dtype)
    else:
        outputs = task.outputs(logits, encoded)
    metrics = task.metrics(outputs, encoded, label_names)
    metrics["loss"] = task.eval_loss(logits, encoded)
    return {"metrics": metrics, "outputs": outputs}


def final_split_metrics(task, recipe: Recipe, run: RunDir, split: str, rows, result: dict[str, Any],
                        label_names: list[str] | None) -> dict[str, Any]:
    """The metrics of the chosen model on one split, with answer similarity (and its histogram) and the judge's
    verdicts for text answers; writes the split's predictions (predictions.jsonl for eval,
    predictions_<split>.jsonl for test and gold). `result` is `evaluate_split`'s."""
    metrics = result["metrics"]
    records = task.records(rows, result["outputs"], label_names)
    if task.text_answers and recipe.similarity.enabled:
        metrics["similarity"] = score_records(records, recipe.similarity, run.path / f"similarity_{split}.png",
                                              title=f"{recipe.name} {split}")
    if task.text_answers and recipe.judge.enabled:
        metrics["judge"] = judge_records(records, recipe.judge)
    write_jsonl(run.predictions if split == "eval" else run.path / f"predictions_{split}.jsonl", records)
    return metrics


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items() if isinstance(v, float | int)}


class _CallableModule(type(sys.modules[__name__])):  # type: ignore[misc]
    """`slingshot.train(recipe)` is the Python API's train (slingshot.api.train). Importing this module binds
    `slingshot.train` to the module itself, so the module answers that call."""

    def __call__(self, *args: Any, **kwargs: Any):
        from slingshot.api import train as api_train

        return api_train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
