"""The recipe: a YAML file validated into typed, documented fields. Every default lives here and only here."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from slingshot.errors import RecipeError

# Metrics each task computes on evaluation, any of which can pick the best model (train.metric).
METRICS = {
    "classification": ("accuracy", "macro_f1", "loss"),
    "regression": ("rmse", "mae", "pearson", "spearman", "loss"),
    "extractive_qa": ("f1", "exact_match", "loss"),
    "generation": ("rouge_l", "exact_match", "f1", "loss"),
    "seq2seq": ("rouge_l", "exact_match", "f1", "loss"),
}
AUTO_METRIC = {"classification": "accuracy", "regression": "rmse", "extractive_qa": "f1", "generation": "rouge_l",
               "seq2seq": "rouge_l"}
# train.min_steps: auto: with 18-60 steps, classifiers fine-tuned on 300 and 1,000 SST-2 sentences scored 24.7 and
# 3.2 points lower than with 200-339 (bench/small_data.py, 3 seeds)
AUTO_MIN_STEPS = 200
# train.lr: auto. Full fine-tuning takes 1e-4. LoRA adapters start at zero and move a small low-rank update: on
# 1,000 SST-2 sentences a LoRA classifier at 1e-4 stayed near chance (55.3 +- 5.6%, 330-339 steps) and reached
# 80.4 / 80.8 / 80.1% at 5e-4 / 1e-3 / 2e-3 (full fine-tuning: 82.0%; bench/small_data.py, 3 seeds). Extractive
# QA with LoRA is flat (PolicyQA, 300 questions: 33.2-34.3 F1 from 1e-4 to 2e-3, its head trains in full) and keeps
# 1e-4; generation is not measured and keeps it too. Models of a billion parameters and more get the QLoRA paper's
# 2e-4 (Dettmers et al., 2023, for 7B-13B models; not measured here).
DEFAULT_LR = 1e-4
AUTO_LORA_LR = 1e-3
AUTO_LORA_LR_LARGE = 2e-4
LARGE_MODEL_PARAMETERS = 1_000_000_000


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    name: str = Field(
        "sentence-transformers/all-MiniLM-L6-v2",
        description="Local folder or Hugging Face model id; resolved offline first (path, HF cache, packaged weights, hub).",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) when downloading.")
    max_length: int = Field(128, ge=8, le=8192, description="Longest input in tokens; longer texts are truncated.")
    pooling: Literal["auto", "cls", "mean"] = Field(
        "cls",
        description="What a classification or regression head reads: cls, the first token (Transformers' own "
        "heads); mean, the masked mean of the token vectors, which sentence-transformers models were trained on, "
        "put at the first token by one appended, frozen encoder layer, so the saved model still loads as is "
        "(BERT-style encoders, method full; the loaded model runs one more layer); auto: mean when the model "
        "folder says it was trained with mean pooling and the method is full, cls otherwise.",
    )


class LimitSection(Section):
    train: int | None = Field(None, ge=1, description="Use at most this many training rows (seeded sample).")
    eval: int | None = Field(None, ge=1, description="Use at most this many evaluation rows (seeded sample).")
    test: int | None = Field(None, ge=1, description="Use at most this many test rows (seeded sample).")


class DataSection(Section):
    train: str | None = Field(
        None,
        description="Training data: a CSV/TSV/JSONL/JSON/Parquet file, a folder with train/dev/test files, "
        "or a Hugging Face dataset id. Relative paths are read from the recipe's folder.",
    )
    eval: str | None = Field(None, description="Evaluation file; when absent a stratified split of train is held out.")
    test: str | None = Field(None, description="Optional test file, scored once at the end.")
    dataset_config: str | None = Field(None, description="Configuration name of a Hugging Face dataset id.")
    text_column: str = Field("text", description="Column holding the text.")
    text_pair_column: str | None = Field(None, description="Second text column for pair tasks (e.g. NLI).")
    label_column: str = Field("label", description="Column holding the label (class name, class index or number).")
    label_names: list[str] | None = Field(
        None, description="Class names in index order; integer labels map to them. Default: sorted labels found."
    )
    eval_fraction: float = Field(0.1, gt=0, lt=1, description="Share of train held out for eval when no eval file.")
    limit: LimitSection = Field(default_factory=LimitSection, description="Subsample each split (seeded).")
    seed: int = Field(42, description="Seed for splits and subsamples.")
    gold: str | None = Field(
        None, description="Human-labelled file kept apart: never trained on nor used to pick the model, scored at "
        "the end (metrics.json 'gold'); `compare --split gold` scores the student against the teacher on it.",
    )
    confidence_column: str = Field(
        "confidence", description="Column of teacher-label confidences (0-1) read by min_confidence and weighting."
    )
    min_confidence: float | None = Field(
        None, ge=0, le=1, description="Train only on rows whose confidence is at least this; null = keep every row."
    )
    weight_by_confidence: bool = Field(
        False, description="Weight each training example's loss by its confidence (teacher labels)."
    )


class LoraSection(Section):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | None = Field(
        None, description="Module names to adapt; default by model family (BERT: query/key/value, GPT-2: c_attn; "
        "generation: every linear layer of the blocks, e.g. q/k/v/o/gate/up/down_proj in Llama; seq2seq: the query "
        "and value projections, q/v in T5, q_proj/v_proj in BART)."
    )


class EarlyStoppingSection(Section):
    patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without improvement; null = never stop early."
    )
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as an improvement.")
    target: float | None = Field(
        None, description="Stop as soon as the metric reaches this value (e.g. 0.90 accuracy); null = no target."
    )


class FewShotSection(Section):
    """Contrastive few-shot training (method: fewshot): the approach SetFit published (Tunstall et al., 2022)."""

    pair_iterations: int | None = Field(
        None, ge=1, description="null: every distinct pair of examples once, the scarcer kind (same-label or "
        "other-label) repeated to balance, as SetFit does by default (~examples^2 / 2 pairs). A number: that many "
        "rounds, each giving every example one same-label and one other-label partner (2 x rounds x examples pairs).",
    )
    max_pairs: int | None = Field(
        10_000, ge=2, description="Most pairs trained on (a seeded, still balanced subset); keeps large training sets "
        "affordable. 10,000 keeps all 8,192 distinct pairs of 64 examples per class in two classes. null = no limit.",
    )
    batch_size: int = Field(
        16, ge=1, description="Most pairs per batch (replaces train.max_batch_size for method fewshot; the token "
        "budget still applies). SetFit's 16: smaller batches mean more steps at the same learning rate.",
    )
    label_template: str | None = Field(
        None, description="Adds made-up training examples that put each class's name into this text, e.g. "
        "\"This sentence is {label}\" (SetFit's get_templated_dataset): the embedding model already knows what "
        "'positive' or 'billing question' means, which helps most at a few examples per class. Needs meaningful "
        "label names (data.label_names or string labels). null = off.",
    )
    label_examples: int = Field(
        8, ge=1, description="Copies of each class's templated example (label_template) among the training "
        "examples; more copies pull the head harder towards the label names.",
    )
    lr: float = Field(
        2e-5, gt=0, description="Learning rate of the body during contrastive training (replaces train.lr, which "
        "suits a new head, not a pretrained embedding space; 2e-5 is SetFit's default).",
    )
    epochs: float = Field(1, gt=0, description="Passes over the pairs (replaces train.epochs for method fewshot).")
    head: Literal["logistic", "linear"] = Field(
        "logistic", description="logistic: scikit-learn logistic regression on the embeddings; linear: a linear "
        "layer trained in PyTorch with cross-entropy on the embeddings.",
    )
    head_c: float = Field(1.0, gt=0, description="Inverse regularisation strength of the logistic head (scikit-learn C).")
    head_epochs: int = Field(200, ge=1, description="Full-batch steps of the linear head (Adam).")
    head_lr: float = Field(1e-2, gt=0, description="Learning rate of the linear head.")


class DistillSection(Section):
    """Knowledge distillation (Hinton et al., 2015): the student also learns the teachers' full output
    distributions, not only the gold labels."""

    teachers: list[str] = Field(
        default_factory=list, description="Finished run directories (or fine-tuned model folders or hub ids) of "
        "the same task whose predictions on the training data the student learns from as well; several are averaged "
        "(an ensemble taught to one model). extractive_qa teachers must share the student's tokenizer. Empty = off.",
    )
    alpha: float = Field(
        0.5, ge=0, le=1, description="Weight of the teachers' soft targets in the loss; 1 - alpha goes to the gold "
        "labels. 1 = learn from the teachers alone.",
    )
    temperature: float = Field(
        2.0, gt=0, description="Softens teacher and student distributions before they are compared (the soft loss "
        "is scaled by temperature^2, so alpha keeps its meaning). Regression compares values: not used.",
    )


class TrainSection(Section):
    method: Literal["full", "lora", "qlora", "fewshot"] = Field(
        "full", description="full: update every weight; lora: PEFT LoRA adapters; qlora: LoRA on 4-bit base weights "
        "(CUDA GPU with bitsandbytes only); fewshot: contrastive sentence pairs, then a classifier head on the "
        "embeddings (classification, from 2 examples per class).",
    )
    epochs: float = Field(3, gt=0, description="Passes over the training data (fractions allowed).")
    lr: PositiveFloat | Literal["auto"] = Field(
        "auto", description="Peak learning rate (AdamW). auto: 1e-3 for LoRA/QLoRA adapters on a classifier or "
        "regressor under 1B parameters (at 1e-4 a LoRA classifier on 1,000 SST-2 sentences stayed near chance; 5e-4 "
        "to 2e-3 scored 80-81%, measured), 2e-4 from 1B up (the QLoRA paper's rate), else 1e-4. Method fewshot "
        "uses fewshot.lr.",
    )
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not applied to biases and LayerNorm).")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Share of optimizer steps spent warming up linearly.")
    schedule: Literal["linear", "cosine", "constant"] = Field("linear", description="Decay after warm-up.")
    layer_decay: float | None = Field(
        None, gt=0, le=1, description="Layer-wise learning-rate decay: the head trains at lr, each layer below at "
        "this factor times the layer above, embeddings last; null = one learning rate for all.",
    )
    freeze_embeddings: bool | Literal["auto"] = Field(
        "auto", description="Keep the input word embeddings as pretrained (full fine-tuning): in a small encoder "
        "they are half the weights, so no gradient or AdamW state for them (~130 MB less peak RSS for MiniLM) and "
        "9-18% faster steps, at the same SST-2 accuracy (measured). auto: on for classification, off for the other "
        "tasks (a decoder's input embeddings are often its output layer too).",
    )
    ema: float | None = Field(
        None, gt=0, lt=1, description="Keep an exponential moving average of the weights with this decay (e.g. "
        "0.999) and evaluate and save it instead of the raw weights; null = off. Warmed up: update n uses "
        "min(ema, (1 + n) / (10 + n)). Costs one copy of the weights.",
    )
    tokens_per_batch: int = Field(
        1024, ge=16, description="Token budget of a batch, padding included: batch size varies, tokens stay constant."
    )
    max_batch_size: int = Field(64, ge=1, description="Upper bound on examples per batch, however short they are.")
    grad_accum: int = Field(1, ge=1, description="Batches accumulated per optimizer step.")
    min_steps: PositiveInt | Literal["auto"] | None = Field(
        "auto", description="The fewest optimizer steps a run makes. A training set too small to give them at "
        "tokens_per_batch trains on smaller batches (the budget halved while a step still sees 8 examples or more), "
        "then makes more passes over the data. auto: 200 for classification and regression (methods full and lora), "
        "where 1,000 SST-2 sentences made 57 steps at 1,024 tokens and scored 3.2 points lower, 300 made 21 and "
        "scored 24.7 lower (measured); off for the other tasks. null: off.",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations during backward: far less activation memory for ~1/3 more compute."
    )
    recompute_elementwise: bool = Field(
        True, description="Keep GELU, LayerNorm and attention-dropout outputs out of memory and recompute them in "
        "the backward pass from tensors kept anyway: bitwise the same gradients, 60-93 MB less per 1,024-token "
        "batch of all-MiniLM-L6-v2 (fp32, measured), for a few elementwise ops. Off under gradient checkpointing, "
        "which keeps none of them.",
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the gradient norm to this; null = no clipping.")
    seed: int = Field(42, description="Seed for weights of new heads, shuffling and dropout.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on a bf16 GPU, or on a CPU with AVX512-BF16/AMX where bf16 matmuls "
        "measure faster than fp32 (checked at the start, ~0.1 s; 1.4x faster training, same accuracy, on an AMD EPYC; "
        "slower on an Intel Xeon without AMX), else fp32."
    )
    attention: Literal["auto", "eager", "sdpa"] = Field(
        "auto", description="Attention kernel while training. auto: eager on a CPU for models with attention dropout "
        "(BERT family: PyTorch's SDPA then takes its math path and keeps fp32 copies of the scores; on MiniLM eager "
        "kept 11-14% less activation memory at the same or up to 7% faster steps, measured), else sdpa. "
        "Evaluation, prediction and the saved model use sdpa, faster for inference.",
    )
    threads: int | None = Field(None, ge=1, description="CPU threads for the math; default: physical cores.")
    mmap_threshold_kb: int | None = Field(
        None, ge=4,
        description="glibc only: memory blocks above this many KB come from the OS and go back when freed, so "
        "activations of varying batch shapes do not pile up in the heap. 64 cut peak RSS by ~370 MB but cost ~40% "
        "of the speed (measured); null: glibc's default.",
    )
    eval_every: int | None = Field(
        None, ge=1, description="Evaluate every N optimizer steps; null = at the end of every epoch."
    )
    metric: str = Field(
        "auto", description="Metric that picks the best model: auto = accuracy (classification), rmse (regression), "
        "f1 (extractive_qa) or rouge_l (generation, seq2seq)."
    )
    early_stopping: EarlyStoppingSection = Field(default_factory=EarlyStoppingSection, description="Early stopping.")
    log_every: int = Field(20, ge=1, description="Write a training-log line every N optimizer steps.")
    checkpoint_every: int | None = Field(
        None, ge=1, description="Save a resumable checkpoint every N optimizer steps (always at each epoch's end)."
    )
    lora: LoraSection = Field(default_factory=LoraSection, description="LoRA settings (method: lora).")
    fewshot: FewShotSection = Field(default_factory=FewShotSection, description="Few-shot settings (method: fewshot).")
    distill: DistillSection = Field(
        default_factory=DistillSection, description="Learn from fine-tuned teacher models too (knowledge distillation)."
    )

    @property
    def loop_max_batch_size(self) -> int:
        """The most rows per training batch: pairs (fewshot.batch_size) for method fewshot, else max_batch_size."""
        return self.fewshot.batch_size if self.method == "fewshot" else self.max_batch_size

    @property
    def loop_epochs(self) -> float:
        """The passes the loop makes: over the pairs (fewshot.epochs) for method fewshot, else epochs."""
        return self.fewshot.epochs if self.method == "fewshot" else self.epochs


class QASection(Section):
    stride: int = Field(
        32, ge=0, description="Tokens shared by consecutive windows of a long context, so an answer cut by one "
        "window's edge is whole in the next."
    )
    max_question_tokens: int = Field(
        48, ge=4, description="Longer questions are cut to this many tokens (BERT's SQuAD max_query_length), "
        "so every window keeps room for context; the cuts are counted."
    )
    max_answer_tokens: int = Field(30, ge=1, description="Longest answer span, in tokens, the decoder may return.")
    n_best: int = Field(20, ge=1, description="Start and end candidates per window combined into spans when decoding.")
    decoding: Literal["best", "expected_f1"] = Field(
        "best", description="How the answer is chosen among the candidate spans: best = the highest start + end "
        "score (SQuAD's rule, best for exact match); expected_f1 = of the n_best likeliest spans, the one with the "
        "highest expected token F1 under the model's own distribution (higher F1, longer answers, lower exact match)."
    )


class GenerationSection(Section):
    """Text-to-text fine-tuning (task: generation, a causal LM; task: seq2seq, an encoder-decoder): data shape, chat
    template and packing (generation only), decoding."""

    messages_column: str = Field("messages", description="Column of chat messages [{role, content}, ...] (docs2qa's "
                                 "chat JSONL); rows without it are read as prompt/completion.")
    prompt_column: str = Field("prompt", description="Column of prompts, when the data is prompt/completion pairs.")
    completion_column: str = Field("completion", description="Column of answers, when the data is prompt/completion.")
    system_prompt: str | None = Field(None, description="System message put first in every conversation without one.")
    template: Literal["auto", "plain", "chatml"] = Field(
        "auto", description="Chat template (generation): auto = the tokenizer's own, else plain ('User: ... / "
        "Assistant: ...'); plain or chatml override it. Saved with the model's tokenizer."
    )
    packing: bool = Field(
        False, description="Pack short training conversations into rows of model.max_length tokens (generation); "
        "each still attends only to itself (positions restart per conversation). Less padding on short data."
    )
    max_new_tokens: int = Field(
        128, ge=1, description="Longest generated answer in tokens (evaluation and predict); for seq2seq also the "
        "longest training target (longer ones are cut, keeping their EOS)."
    )
    temperature: float = Field(0.0, ge=0, le=5, description="Sampling temperature; 0 = greedy decoding (repeatable).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: sample from the smallest set of tokens "
                         "whose probability reaches top_p (with temperature > 0).")
    num_beams: int = Field(
        1, ge=1, le=32, description="Beam search over this many candidates (1 = greedy, or sampling with "
        "temperature > 0); each beam costs a sequence of decoding work, so evaluation slows about as much."
    )


class SimilaritySection(Section):
    enabled: bool = Field(
        True, description="Score text answers (extractive_qa, generation, seq2seq) by embedding cosine against the references."
    )
    model: str = Field(
        "sentence-transformers/all-MiniLM-L6-v2", description="Sentence-embedding model (mean pooling), resolved offline first."
    )
    acceptable: float = Field(0.5, ge=-1, le=1, description="Cosine at or above which an answer is acceptable.")
    borderline: float = Field(
        0.4, ge=-1, le=1, description="Cosine at or above which (and below `acceptable`) an answer is borderline; "
        "below it, unacceptable."
    )
    worst: int = Field(10, ge=0, description="How many lowest-similarity pairs the report lists.")


class OutputSection(Section):
    dir: str = Field("runs", description="Folder that holds run directories (relative to the working directory).")
    price_per_hour_usd: float = Field(
        0.0, ge=0, description="Price of this machine per hour, for the cost estimate in summary.json."
    )


class PlanSection(Section):
    """What `slingshot plan` (and the plan `slingshot run` shows first) assumes: hardware, prices, budget."""

    hardware: str = Field(
        "auto", description="auto: this machine, detected and calibrated; or a profile: cpu-2core, cpu-8core, t4-16gb, "
        "l4-24gb, a10g-24gb, a100-40gb, a100-80gb, h100-80gb (see `slingshot plan --help`).",
    )
    price_per_hour_usd: dict[str, float] = Field(
        default_factory=dict, description="Price overrides by hardware name (or auto), e.g. {a10g-24gb: 0.75}; default: "
        "the built-in on-demand table.",
    )
    usable_memory_fraction: float = Field(
        0.9, gt=0, le=1, description="Share of RAM (or GPU memory) a run may use; the rest is left to the system."
    )
    budget_usd: float | None = Field(None, ge=0, description="Most a training run may cost, for the model short list.")
    max_train_time_s: float | None = Field(
        3600, gt=0, description="Longest training run the short list accepts, in seconds; null = no limit."
    )
    shortlist_size: int = Field(5, ge=0, le=30, description="Models in the advice's ranked short list.")


class LLMSection(Section):
    """An OpenAI-compatible chat-completions endpoint: OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp, LM Studio."""

    base_url: str = Field("https://api.openai.com/v1", description="Endpoint root, up to and including /v1.")
    model: str = Field("gpt-4o-mini", description="Model name the endpoint serves.")
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="Name of the environment variable holding the API key; the key is never written anywhere.",
    )
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature; 0 makes answers repeatable.")
    max_tokens: int = Field(64, ge=1, description="Longest answer in tokens.")
    timeout_s: float = Field(60.0, gt=0, description="Seconds to wait for one response before retrying.")
    max_retries: int = Field(
        4, ge=0, description="Retries per request on 429, 5xx, timeouts and dropped connections (exponential back-off)."
    )
    concurrency: int = Field(4, ge=1, le=256, description="Requests in flight at once.")
    price_input_per_1m_usd: float | None = Field(
        None, ge=0, description="Price per million prompt tokens; default: the built-in table for known models."
    )
    price_output_per_1m_usd: float | None = Field(
        None, ge=0, description="Price per million completion tokens; default: the built-in table for known models."
    )


class JudgeSection(Section):
    """An LLM grading text answers against the references (optional; answers are cached, so reruns cost nothing)."""

    enabled: bool = Field(False, description="Ask an LLM whether each answer is correct given the reference.")
    llm: LLMSection = Field(default_factory=LLMSection, description="The judge's OpenAI-compatible endpoint.")


class PublishedSection(Section):
    name: str = Field(description="System name as published, e.g. 'gpt-3.5-turbo zero-shot'.")
    metric: str = Field("accuracy", description="Which metric the figure is.")
    value: float = Field(description="The published figure, as a fraction (0.937) or a percentage (93.7).")
    source: str = Field(description="Where it was published (paper, model card, URL).")


class CompareSection(Section):
    baselines: list[str] = Field(
        default_factory=list,
        description="Systems to compare the fine-tuned model with: majority, embedding, llm, teacher (the label "
        "section's endpoint and prompt), first_sentence (extractive QA), or the path of another Slingshot run. "
        "Empty: `slingshot run` skips it.",
    )
    split: Literal["eval", "test", "gold"] = Field(
        "eval", description="Which split of the run's data to compare on (gold: the recipe's data.gold file)."
    )
    limit: int | None = Field(None, ge=1, description="Compare on at most this many examples (seeded sample).")
    llm: LLMSection = Field(default_factory=LLMSection, description="The LLM baseline's endpoint (baseline: llm).")
    shots: int = Field(0, ge=0, le=64, description="Examples from the training set shown in the LLM prompt (k-shot).")
    answer_format: Literal["text", "json_object", "json_schema"] = Field(
        "text", description="text: parse a free answer; json_object / json_schema: ask for {\"label\": ...} "
        "(structured output, where the endpoint supports it).",
    )
    label_descriptions: dict[str, str] = Field(
        default_factory=dict, description="Optional description per label name, shown to the LLM and embedded."
    )
    embedding_model: str = Field(
        "sentence-transformers/all-MiniLM-L6-v2", description="Sentence-embedding model of the embedding baseline."
    )
    hardware_price_per_hour_usd: float = Field(
        0.09, ge=0,
        description="Price per hour of the machine running the local models, for cost per 1,000 predictions; "
        "default ~ a 2-vCPU cloud VM on demand (AWS c7i.large, us-east-1: 0.089 USD/h).",
    )
    latency_examples: int = Field(100, ge=1, description="Examples timed one at a time for local p50/p95 latency.")
    bootstrap_samples: int = Field(2000, ge=100, description="Bootstrap resamples for confidence intervals.")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence level of intervals and verdicts.")
    seed: int = Field(42, description="Seed for the example sample, k-shot examples and bootstrap.")
    published: list[PublishedSection] = Field(
        default_factory=list, description="Published figures shown as reference rows (marked: not measured)."
    )


class IngestSection(Section):
    suffixes: list[str] = Field(
        [".pdf", ".txt", ".md", ".markdown", ".html", ".htm"],
        description="File types read from a folder; other files there are skipped and listed in the report.",
    )
    min_chars_per_page: int = Field(
        20, ge=0, description="A PDF page with fewer extracted characters counts as empty (no text layer there).",
    )


class CleanSection(Section):
    normalise_text: bool = Field(
        True, description="Unicode NFKC (ligatures, odd spaces), straight quotes, no control or zero-width characters, "
        "single spaces.",
    )
    drop_headers_footers: bool = Field(
        True, description="Drop running headers and footers: lines at the top or bottom of many pages, digits ignored.",
    )
    header_footer_min_share: float = Field(
        0.3, gt=0, le=1, description="A top/bottom line repeated on at least this share of pages (and 3) is a header.",
    )
    drop_footnotes: bool = Field(
        True, description="Drop footnotes: a block at a page's bottom starting with a number whose marker is in the text.",
    )
    drop_page_numbers: bool = Field(True, description="Drop lines that are only a page number (12, iv, 3-5, Page 7).")
    drop_toc_leaders: bool = Field(True, description="Drop table-of-contents lines with dot leaders ('Scope ..... 4').")
    dehyphenate: bool = Field(True, description="Rejoin words hyphenated across line breaks ('infor-/mation').")
    merge_lines: bool = Field(True, description="Merge wrapped lines into paragraphs.")


class ChunkSection(Section):
    tokenizer: str = Field(
        "sentence-transformers/all-MiniLM-L6-v2",
        description="Tokenizer that measures chunks: the model you will train (folder or id, resolved offline first).",
    )
    max_tokens: int = Field(256, ge=16, le=8192, description="Longest chunk in tokens (no special tokens counted).")
    overlap_tokens: int = Field(
        32, ge=0, description="Whole sentences up to this many tokens repeated from the end of the previous chunk.",
    )


class TeacherSection(Section):
    llm: LLMSection = Field(
        default_factory=lambda: LLMSection(max_tokens=1024),
        description="The teacher's OpenAI-compatible endpoint (longer answers than the default: a JSON list of pairs).",
    )
    json_mode: bool = Field(
        True, description="Ask for response_format json_object; switch off for servers that reject it.",
    )
    json_retries: int = Field(1, ge=0, description="Times an answer that is not the asked-for JSON is asked again.")
    min_answer_overlap: float = Field(
        0.6, ge=0, le=1, description="Share of an answer's content words that must occur in the chunk (grounding).",
    )


class Docs2QASection(Section):
    """`slingshot docs2qa`: documents to question-answer pairs with provenance."""

    ingest: IngestSection = Field(default_factory=IngestSection, description="Which files are read.")
    clean: CleanSection = Field(default_factory=CleanSection, description="Cleaning steps, each switchable.")
    chunk: ChunkSection = Field(default_factory=ChunkSection, description="Token chunking.")
    generator: Literal["offline", "teacher"] = Field(
        "offline", description="offline: extractive pairs from the chunk's own sentences, no LLM; teacher: an LLM.",
    )
    pairs_per_chunk: int = Field(3, ge=1, le=50, description="Most pairs generated from one chunk.")
    teacher: TeacherSection = Field(default_factory=TeacherSection, description="The teacher LLM (generator: teacher).")
    near_duplicate_similarity: float = Field(
        0.8, gt=0, le=1, description="Questions whose word-set Jaccard similarity reaches this are near-duplicates.",
    )
    eval_fraction: float = Field(
        0.2, ge=0, lt=1, description="Share of documents (whole documents, at least one) held out as the eval split.",
    )
    seed: int = Field(42, description="Seed for choosing the held-out documents.")
    chat_include_context: bool = Field(
        False, description="Chat export: put the chunk in the user turn (reading comprehension); default closed-book.",
    )


class TrackSection(Section):
    to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list,
        description="Experiment trackers that receive metrics, the resolved recipe and the summary (through "
        "Accelerate); each needs its extra, e.g. pip install 'slingshot-lm[mlflow]'. Empty: no tracking.",
    )
    project: str | None = Field(None, description="Project / experiment name; default: the run name.")
    dir: str | None = Field(
        None, description="Folder of the local stores (TensorBoard logs, MLflow file store); default: "
        "<output.dir>/tracking. MLflow honours MLFLOW_TRACKING_URI when set; W&B its own settings.",
    )


class LabelSection(Section):
    """A teacher LLM labels unlabelled texts (`slingshot label`), each label with a confidence."""

    input: str | None = Field(
        None, description="Unlabelled texts (data.text_column) for the teacher; with it and no data.train, "
        "`slingshot run` labels them first and trains on the result.",
    )
    output: str | None = Field(
        None, description="Folder for labelled.<ext> and label_report.json; default <output.dir>/<name>-labels."
    )
    llm: LLMSection = Field(default_factory=LLMSection, description="The teacher's endpoint.")
    seed_set: str | None = Field(
        None, description="Labelled examples (data.* columns) for k-shot prompts; its labels must be the recipe's."
    )
    shots: int = Field(0, ge=0, le=64, description="Examples from seed_set shown in each prompt (k-shot).")
    answer_format: Literal["text", "json_object", "json_schema"] = Field(
        "text", description="text: parse a free answer; json_object / json_schema: ask for {\"label\": ...}."
    )
    label_descriptions: dict[str, str] = Field(
        default_factory=dict, description="Optional description per label name, shown to the teacher."
    )
    logprobs: bool = Field(
        True, description="Ask for token log-probabilities; where returned they give each label's confidence."
    )
    top_logprobs: int = Field(5, ge=1, le=20, description="Alternatives per token returned with the log-probabilities.")
    samples: int = Field(
        1, ge=1, le=20, description="Answers per text when no log-probabilities come back: confidence is their "
        "agreement, the label their majority; 1 = no confidence.",
    )
    sample_temperature: float = Field(0.7, gt=0, le=2, description="Temperature of the extra samples (2nd onwards).")
    context_tokens: int = Field(
        8192, ge=256, description="The teacher's context window; longer texts are truncated to fit with the prompt "
        "and answer (tokens estimated at 3 characters each), and counted.",
    )
    seed: int = Field(42, description="Seed for picking the k-shot examples.")


class SelectSection(Section):
    """Active learning (`slingshot select`): which unlabelled texts to label next."""

    n: int = Field(200, ge=1, description="Texts to pick.")
    strategy: Literal["uncertainty", "diverse", "mixed"] = Field(
        "mixed", description="uncertainty: least sure first; diverse: k-center greedy on the model's embeddings; "
        "mixed: k-center greedy among the most uncertain.",
    )
    uncertainty: Literal["margin", "entropy"] = Field(
        "margin", description="margin: 1 - (top probability - second); entropy: of the predicted distribution."
    )
    mixed_pool_factor: int = Field(
        5, ge=1, description="mixed: diversity picks n among the n x this most uncertain texts."
    )


class CurveSection(Section):
    """`slingshot curve`: quality against the number of labelled examples, over methods and seeds."""

    sizes: list[int | Literal["all"]] = Field(
        [8, 16, 32, 64, 256, 1000, "all"],
        description="Training-set sizes: up to per_class_up_to a size is examples per class, beyond it a total; "
        "'all' is the whole training set.",
    )
    per_class_up_to: int = Field(64, ge=1, description="Sizes up to this are per class; larger ones are totals.")
    methods: list[Literal["fewshot", "full", "lora"]] = Field(["fewshot", "full"], description="Methods to train.")
    seeds: int = Field(3, ge=1, description="Seeds (0, 1, ...) per point: each draws its own sample and training run.")
    total_size_seeds: int | None = Field(
        None, ge=1, description="Seeds for sizes given as totals (the expensive ones); null = seeds.",
    )
    tolerance: float = Field(
        0.01, ge=0, description="'Enough data' is the smallest size whose mean comes within this of the reference "
        "(as a fraction: 0.01 = 1 point of accuracy).",
    )
    baseline: str | None = Field(
        None, description="Reference instead of the best point: a number (0.93), or a comparison.json (or the run "
        "folder holding it) from `slingshot compare`, optionally #name to pick a system (default: its best baseline).",
    )
    keep_models: bool = Field(False, description="Keep every point's model folder (about 90 MB each for MiniLM).")


class Recipe(Section):
    """A whole fine-tuning job: what to learn, from which data, with which model, how, and where to write."""

    name: str | None = Field(None, description="Run name; the run directory is <output.dir>/<name>. Default: file stem.")
    task: Literal["classification", "regression", "extractive_qa", "generation", "seq2seq"] = Field(
        "classification", description="classification: one label per text; regression: one number per text; "
        "extractive_qa: the answer span of a question in a context (SQuAD v1.1 JSON or JSONL); generation: a causal "
        "LM writes the answer (chat messages or prompt/completion); seq2seq: an encoder-decoder (T5, BART) writes "
        "the target of a source (prompt/completion columns or chat messages)."
    )
    model: ModelSection = Field(default_factory=ModelSection, description="Which model to fine-tune.")
    data: DataSection = Field(default_factory=DataSection, description="Where the data is and which columns to use.")
    train: TrainSection = Field(default_factory=TrainSection, description="How to train.")
    qa: QASection = Field(default_factory=QASection, description="Windows and decoding of extractive_qa.")
    generation: GenerationSection = Field(
        default_factory=GenerationSection, description="Data columns, chat template, packing and decoding of task: "
        "generation and seq2seq."
    )
    similarity: SimilaritySection = Field(
        default_factory=SimilaritySection, description="Answer-similarity evaluation of text answers."
    )
    judge: JudgeSection = Field(default_factory=JudgeSection, description="Optional LLM-as-judge of text answers.")
    output: OutputSection = Field(default_factory=OutputSection, description="Where to write and what it costs.")
    plan: PlanSection = Field(
        default_factory=PlanSection, description="Hardware, prices and budget for the memory/time/cost plan."
    )
    compare: CompareSection = Field(
        default_factory=CompareSection, description="Baselines to compare the fine-tuned model with (slingshot compare)."
    )
    track: TrackSection = Field(default_factory=TrackSection, description="Experiment trackers (off by default).")
    docs2qa: Docs2QASection = Field(
        default_factory=Docs2QASection, description="Documents to question-answer data (`slingshot docs2qa`)."
    )
    label: LabelSection = Field(
        default_factory=LabelSection, description="A teacher LLM labelling unlabelled texts (slingshot label)."
    )
    select: SelectSection = Field(
        default_factory=SelectSection, description="Active learning: texts to label next (slingshot select)."
    )
    curve: CurveSection = Field(default_factory=CurveSection, description="Learning curve (`slingshot curve`).")

    # The folder relative data paths are read from; not part of the YAML.
    base_dir: Path = Field(default=Path("."), exclude=True, description="Folder the recipe was read from.")

    @model_validator(mode="after")
    def _check_consistency(self) -> "Recipe":
        problems = []
        if self.task == "regression" and self.data.label_names:
            problems.append("data.label_names is only for classification; remove it for task: regression")
        if self.task == "regression" and (self.label.input or self.data.min_confidence is not None
                                          or self.data.weight_by_confidence):
            problems.append("teacher labels (label.input, data.min_confidence, data.weight_by_confidence) are for "
                            "classification; remove them for task: regression")
        if self.train.method == "fewshot" and self.task != "classification":
            problems.append("train.method fewshot is for classification; use full or lora for regression")
        template = self.train.fewshot.label_template
        if template is not None and "{label}" not in template:
            problems.append(f"train.fewshot.label_template {template!r} has no {{label}} where the class name goes")
        if self.train.distill.teachers and (self.task not in ("classification", "regression", "extractive_qa")
                                            or self.train.method == "fewshot"):
            problems.append(f"train.distill is for classification, regression and extractive_qa with method full, lora "
                            f"or qlora, not task {self.task} with method {self.train.method}; remove train.distill.teachers")
        if self.model.pooling == "mean" and (self.task not in ("classification", "regression")
                                             or self.train.method != "full"):
            problems.append(f"model.pooling mean is for classification and regression with method full, not task "
                            f"{self.task} with method {self.train.method}; set model.pooling: auto or cls")
        if self.train.method == "fewshot" and self.data.text_pair_column:
            problems.append("train.method fewshot embeds single texts; data.text_pair_column needs full or lora")
        if self.train.metric != "auto" and self.train.metric not in METRICS[self.task]:
            problems.append(f"train.metric '{self.train.metric}' is not computed for task {self.task}; "
                            f"use one of: auto, {', '.join(METRICS[self.task])}")
        if self.task == "seq2seq" and (self.generation.packing or self.generation.template != "auto"):
            problems.append("generation.packing and generation.template are for task generation (a causal LM); an "
                            "encoder-decoder reads the prompt as plain text: remove them for task: seq2seq")
        if self.similarity.borderline > self.similarity.acceptable:
            problems.append(f"similarity.borderline ({self.similarity.borderline}) must not exceed "
                            f"similarity.acceptable ({self.similarity.acceptable})")
        if self.task == "extractive_qa":
            # [CLS] question [SEP] context [SEP]: three special tokens in BERT; the tokenizer's own count is
            # checked again in prepare. Each window must add context beyond the part it shares with the last one.
            room = self.model.max_length - self.qa.max_question_tokens - 3
            if room <= self.qa.stride:
                problems.append(f"model.max_length {self.model.max_length} leaves {room} context tokens per window "
                                f"after a {self.qa.max_question_tokens}-token question, not more than qa.stride "
                                f"{self.qa.stride}; raise model.max_length or lower qa.stride/qa.max_question_tokens")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def best_metric(self) -> str:
        if self.train.metric != "auto":
            return self.train.metric
        return AUTO_METRIC[self.task]

    def freezes_embeddings(self, method: str | None = None) -> bool:
        """Whether training with `method` (default: the recipe's) keeps the input word embeddings frozen:
        train.freeze_embeddings, with auto on for full fine-tuning of a classifier (measured there: same accuracy,
        less memory, faster steps) and off elsewhere. Only full fine-tuning has them to freeze."""
        if (method or self.train.method) != "full":
            return False
        if self.train.freeze_embeddings == "auto":
            return self.task == "classification"
        return self.train.freeze_embeddings

    def learning_rate(self, method: str | None = None, parameters: int | None = None) -> float:
        """The peak learning rate the loop uses with `method` (default: the recipe's) on a model of `parameters`
        (None: unknown, taken as small): fewshot.lr for method fewshot, else train.lr, with auto AUTO_LORA_LR for
        LoRA/QLoRA on classification and regression (measured on SST-2 and tweets with a 22M encoder),
        AUTO_LORA_LR_LARGE for those from LARGE_MODEL_PARAMETERS up, and DEFAULT_LR elsewhere."""
        method = method or self.train.method
        if method == "fewshot":
            return self.train.fewshot.lr
        if self.train.lr != "auto":
            return self.train.lr
        if method not in {"lora", "qlora"} or self.task not in {"classification", "regression"}:
            return DEFAULT_LR
        return AUTO_LORA_LR_LARGE if (parameters or 0) >= LARGE_MODEL_PARAMETERS else AUTO_LORA_LR

    def min_train_steps(self) -> int | None:
        """train.min_steps resolved: auto is AUTO_MIN_STEPS for classification and regression trained with
        method full or lora (measured on SST-2), off for the other tasks and for method fewshot (pairs)."""
        if self.train.method == "fewshot":
            return None
        if self.train.min_steps == "auto":
            wanted = self.task in {"classification", "regression"} and self.train.method in {"full", "lora"}
            return AUTO_MIN_STEPS if wanted else None
        return self.train.min_steps

    def batch_tokens(self, lengths: Sequence[int], processes: int = 1) -> int:
        """The token budget of the training batches for these example lengths: train.tokens_per_batch, or less for
        a training set too small to give min_train_steps() optimizer steps with it (batching.fit_token_budget)."""
        from slingshot.batching import fit_token_budget

        return fit_token_budget(lengths, self.train.tokens_per_batch, self.train.loop_max_batch_size,
                                min_steps=self.min_train_steps(), epochs=self.train.loop_epochs,
                                grad_accum=self.train.grad_accum, processes=processes, seed=self.train.seed)

    @property
    def metric_greater_is_better(self) -> bool:
        return self.best_metric not in {"loss", "mae", "rmse"}

    @property
    def label_folder(self) -> Path:
        """Where `slingshot label` writes the labelled file and label_report.json."""
        return Path(self.label.output or Path(self.output.dir) / f"{self.name or 'run'}-labels")

    @property
    def labelled_path(self) -> Path:
        """The teacher-labelled file: the input's format where it can be written back (CSV, TSV, JSONL), else JSONL."""
        suffix = Path(self.label.input or "x.csv").suffix.lower()
        return self.label_folder / f"labelled{suffix if suffix in {'.csv', '.tsv', '.jsonl'} else '.jsonl'}"

    def resolve_path(self, value: str | None) -> str | None:
        """A data path relative to the recipe's folder; a dataset id or absolute path is returned unchanged."""
        if value is None:
            return None
        path = Path(value).expanduser()
        if path.is_absolute():
            return str(path)
        local = self.base_dir / path
        if local.exists() or looks_like_path(value):
            return str(local.resolve())
        return value

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def looks_like_path(value: str) -> bool:
    return value.startswith((".", "/", "~")) or Path(value).suffix.lower() in DATA_SUFFIXES


DATA_SUFFIXES = {".csv", ".tsv", ".jsonl", ".json", ".parquet", ".txt"}


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file. Raises RecipeError listing every problem at once."""
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"recipe file not found: {path}", "check the path, or start from examples/sst2/recipe.yaml")
    if path.is_dir():
        raise RecipeError(f"{path} is a folder, not a recipe file", "name the recipe's YAML file, e.g. examples/sst2/recipe.yaml")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RecipeError(f"recipe is not valid YAML at {where}: {getattr(exc, 'problem', exc)}", "fix the YAML syntax")
    except UnicodeDecodeError:
        raise RecipeError(f"recipe is not UTF-8 text: {path}", "save the recipe as UTF-8")
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe must be a mapping of sections, got {type(raw).__name__}: {path}")
    raw.setdefault("name", path.stem if path.stem != "recipe" else path.parent.resolve().name)
    raw = apply_overrides(raw, overrides or [])
    return recipe_from_dict(raw, base_dir=path.parent, source=str(path))


def recipe_from_dict(raw: dict[str, Any], base_dir: Path | str = ".", source: str = "recipe") -> Recipe:
    problems = unknown_key_problems(raw, Recipe)
    if problems:
        raise RecipeError(f"{source}: " + "; ".join(problems), "fix the keys named above (`slingshot fields` lists every field)")
    try:
        recipe = Recipe(**raw)
    except ValidationError as exc:
        raise RecipeError(f"{source}: " + "; ".join(validation_problems(exc)), "fix the values named above")
    recipe.base_dir = Path(base_dir)
    # Data paths become absolute here, so the recipe saved into a run still points at the same files.
    for section, key in (("data", "train"), ("data", "eval"), ("data", "test"), ("data", "gold"),
                         ("label", "input"), ("label", "seed_set")):
        value = getattr(getattr(recipe, section), key)
        if value is not None:
            setattr(getattr(recipe, section), key, recipe.resolve_path(value))
    return recipe


def validation_problems(exc: ValidationError) -> list[str]:
    """One problem per field: a field that takes a number or 'auto' fails once ("train.lr: Input should be greater
    than 0, or 'auto' (got -1)"), not once per member of its type with pydantic's member tags in the path."""
    grouped: dict[str, tuple[list[str], Any]] = {}
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"] if not _union_member(p)) or "recipe"
        messages, _ = grouped.setdefault(where, ([], err.get("input")))
        message = err["msg"]
        if messages and message.startswith("Input should be "):
            message = message.removeprefix("Input should be ")
        if message not in messages:
            messages.append(message)
    return [f"{where}: " + ", or ".join(messages) + (f" (got {value!r})" if _short(value) else "")
            for where, (messages, value) in grouped.items()]


def _union_member(part: Any) -> bool:
    """Whether a part of a pydantic error location names a member of a union type rather than a field."""
    return isinstance(part, str) and (part.startswith(("constrained-", "literal[", "function-", "list[", "dict["))
                                      or part in {"int", "float", "str", "bool", "none"})


def _short(value: Any) -> bool:
    return value is not None and not isinstance(value, dict | list) and len(repr(value)) < 60


def unknown_key_problems(raw: Any, model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key not in the schema, each with the closest valid key, collected over all sections."""
    if not isinstance(raw, dict):
        return []
    problems = []
    fields = {name: f for name, f in model.model_fields.items() if name != "base_dir"}
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            suggestion = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(fields)}"
            problems.append(f"unknown key '{prefix}{key}'{suggestion}")
            continue
        annotation = fields[key].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            problems += unknown_key_problems(value, annotation, f"{prefix}{key}.")
    return problems


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides; values are parsed as YAML so numbers, booleans and lists keep their types."""
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override '{item}' has no '='", "write overrides as --set section.key=value, e.g. --set train.lr=5e-5")
        dotted, value = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = raw
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"override '{item}': '{key}' is not a section", "override a field inside a section")
            node = child
        try:
            node[keys[-1]] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            node[keys[-1]] = value
    return raw


def describe_fields(model: type[BaseModel] = Recipe, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every field: what `slingshot recipe` prints."""
    rows = []
    for name, field in model.model_fields.items():
        if name == "base_dir":
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += describe_fields(annotation, f"{prefix}{name}.")
        else:
            default = field.get_default(call_default_factory=True)
            rows.append((f"{prefix}{name}", repr(default), field.description or ""))
    return rows
