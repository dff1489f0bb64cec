"""Few-shot classification: contrastive training of a sentence-embedding body on pairs, then a head on embeddings.

The method SetFit published (Tunstall et al., 2022, "Efficient Few-Shot Learning Without Prompts"): from a few
labelled texts, build pairs (same label: similarity 1, different labels: 0), fine-tune the body so the cosine
similarity of the mean-pooled embeddings matches, then fit a light classifier on the embeddings. Pairs multiply
the training signal (n examples give ~n^2 pairs), which is why it beats plain fine-tuning at 8 examples per class.

The contrastive phase runs through the one training loop (`train.py`) like any task: a training row is a pair, a
batch stacks the first texts then the second ones, and `loss` is the cosine-similarity loss. Before every
evaluation the loop calls `fit_head`, which fits the classifier on the training examples' embeddings and copies
it into the model's linear layer, so the saved model is one `torch.nn.Module` whose forward gives logits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset, concatenate_datasets

from slingshot.batching import PaddingCollator
from slingshot.errors import DataError, ModelError
from slingshot.models import ResolvedModel
from slingshot.recipe import FewShotSection, Recipe
from slingshot.tasks.classification import ClassificationTask

HEAD_FILE = "head.safetensors"
HEAD_INFO_FILE = "fewshot_head.json"
ENUMERATED_PAIRS = 2_000_000  # distinct pairs listed in memory at most (two int64 indices each: 32 MB)


# ---------------------------------------------------------------------------------------------------- pairs


def generate_pairs(labels, iterations: int, seed: int, max_pairs: int | None = None) -> list[tuple[int, int, float]]:
    """Balanced contrastive pairs `(anchor, partner, target)`: target 1.0 for the same label, 0.0 for another.

    Each round visits every example once, in a seeded order, and gives it one positive partner (another example of
    its class, never itself) and one negative partner (any example of another class), so positives and negatives
    are equal in number. `max_pairs` keeps the first pairs (rounded down to an even count, so still balanced).

    Raises:
        DataError: fewer than two classes, or a class with a single example (it has no positive partner).
    """
    labels = np.asarray(labels)
    _check_pairable(labels)
    classes, class_of, counts = np.unique(labels, return_inverse=True, return_counts=True)
    # Examples grouped by class in one array: class c occupies order[start[c] : start[c] + counts[c]].
    order = np.argsort(class_of, kind="stable")
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(labels), dtype=np.int64)  # position of each example inside its class block
    rank[order] = np.arange(len(labels)) - start[class_of[order]]

    rng = np.random.default_rng(seed)
    wanted = iterations * len(labels)
    if max_pairs is not None:
        wanted = min(wanted, max_pairs // 2)
    pairs: list[tuple[int, int, float]] = []
    while len(pairs) < 2 * wanted:
        anchors = rng.permutation(len(labels))[: wanted - len(pairs) // 2]
        anchor_class = class_of[anchors]
        # Positive: one of the class's other members; drawing from count - 1 slots and stepping over the anchor's
        # own slot makes every other member equally likely and the anchor impossible.
        draw = (rng.random(len(anchors)) * (counts[anchor_class] - 1)).astype(np.int64)
        draw += draw >= rank[anchors]
        positives = order[start[anchor_class] + draw]
        # Negative: one of the examples outside the class block, uniformly.
        draw = (rng.random(len(anchors)) * (len(labels) - counts[anchor_class])).astype(np.int64)
        draw += (draw >= start[anchor_class]) * counts[anchor_class]
        negatives = order[draw]
        for anchor, positive, negative in zip(anchors.tolist(), positives.tolist(), negatives.tolist()):
            pairs.append((anchor, positive, 1.0))
            pairs.append((anchor, negative, 0.0))
    return pairs


def distinct_pairs(labels, seed: int, max_pairs: int | None = None) -> list[tuple[int, int, float]]:
    """Every distinct pair of examples once, balanced: SetFit's default ('oversampling', num_iterations unset).

    Pairs of the scarcer kind (usually same-label) are repeated, in the same seeded order, until there are as many
    as of the other kind; positives and negatives alternate. `max_pairs` keeps a seeded, still balanced subset.
    Unlike SetFit, an example is never paired with itself (SetFit's 'combinations with replacement' adds n such
    pairs). n examples give about n^2/2 pairs against 2 x rounds x n for `generate_pairs`. When there are more than
    ENUMERATED_PAIRS distinct pairs, `max_pairs` of them are drawn at random (`generate_pairs`) instead of listed:
    from that many, a draw seldom repeats one.

    Raises:
        DataError: fewer than two classes, a class with a single example, or too many pairs to list without a limit.
    """
    labels = np.asarray(labels)
    _check_pairable(labels)
    if len(labels) * (len(labels) - 1) // 2 > ENUMERATED_PAIRS:
        if max_pairs is None:
            raise DataError(f"{len(labels):,} training examples make {len(labels) * (len(labels) - 1) // 2:,} "
                            "distinct pairs, too many to train on every one",
                            "set train.fewshot.max_pairs (e.g. 10000) or train.fewshot.pair_iterations")
        return generate_pairs(labels, -(-max_pairs // (2 * len(labels))), seed, max_pairs)
    first, second = np.triu_indices(len(labels), k=1)  # every unordered pair of two different examples
    order = np.random.default_rng(seed).permutation(len(first))
    first, second = first[order], second[order]
    same = labels[first] == labels[second]
    positives = np.stack([first[same], second[same]], axis=1)  # (pairs, 2)
    negatives = np.stack([first[~same], second[~same]], axis=1)
    each = max(len(positives), len(negatives))
    if max_pairs is not None:
        each = min(each, max_pairs // 2)
    positives, negatives = np.resize(positives, (each, 2)), np.resize(negatives, (each, 2))  # resize repeats rows
    pairs: list[tuple[int, int, float]] = []
    for (a, b), (c, d) in zip(positives.tolist(), negatives.tolist()):
        pairs.append((a, b, 1.0))
        pairs.append((c, d, 0.0))
    return pairs


def _check_pairable(labels: np.ndarray) -> None:
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise DataError("few-shot pairs need at least two classes", "label examples of two or more classes")
    if counts.min() < 2:
        lonely = classes[counts.argmin()]
        raise DataError(f"class {lonely!r} has a single training example; few-shot pairs need 2 per class",
                        "label at least one more example of that class")


def add_label_examples(train: Dataset, label_names: list[str], settings: FewShotSection) -> Dataset:
    """The training split plus `label_examples` copies per class of `label_template` filled with the class name.

    SetFit's `get_templated_dataset`: "This sentence is positive" is a training example of class positive. The
    copies join the pairs and the head's examples alike; their rows are numbered 0 (no line in any file).
    """
    template = settings.label_template
    if template is None:
        return train
    numeric = [name for name in label_names if name.strip().lstrip("-").isdigit()]
    if numeric:
        raise DataError(f"train.fewshot.label_template needs class names, but the classes are numbers "
                        f"({', '.join(numeric[:5])})",
                        "name the classes in data.label_names (in label order), or set label_template: null")
    texts = [template.replace("{label}", name) for name in label_names for _ in range(settings.label_examples)]
    labels = [index for index in range(len(label_names)) for _ in range(settings.label_examples)]
    known = {"text": texts, "label": labels, "row": [0] * len(texts), "weight": [1.0] * len(texts)}
    extra = {column: known.get(column, [None] * len(texts)) for column in train.column_names}
    return concatenate_datasets([train, Dataset.from_dict(extra, features=train.features)])


# ---------------------------------------------------------------------------------------------------- model


class SentenceEmbeddingClassifier(torch.nn.Module):
    """A transformer body, mean pooling, L2 normalisation, and a linear head on the embedding.

    `forward(...)` returns an output with `.logits` (batch, classes), like a Hugging Face classifier, so the shared
    inference path serves it; `forward(..., return_embeddings=True)` returns the embeddings (batch, dim). The head
    is fitted outside backpropagation (`fit_head`), so its parameters never take gradients.
    """

    def __init__(self, body: torch.nn.Module, num_labels: int):
        super().__init__()
        self.body = body
        self.config = body.config  # id2label / label2id live here, as in a Hugging Face classifier
        self.head = torch.nn.Linear(body.config.hidden_size, num_labels)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)
        self.head.requires_grad_(False)

    def forward(self, input_ids, attention_mask, token_type_ids=None, return_embeddings: bool = False):
        from transformers.modeling_outputs import SequenceClassifierOutput

        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (batch, tokens, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # (batch, dim): mean over real tokens
        embeddings = F.normalize(pooled.float(), dim=-1)
        if return_embeddings:
            return embeddings
        return SequenceClassifierOutput(logits=self.head(embeddings))


class EmbeddingView(torch.nn.Module):
    """The model's embeddings presented as `.logits`, so `forward_logits` (the one inference path) computes them."""

    def __init__(self, model: SentenceEmbeddingClassifier):
        super().__init__()
        self.model = model

    def forward(self, **batch):
        from transformers.modeling_outputs import SequenceClassifierOutput

        return SequenceClassifierOutput(logits=self.model(**batch, return_embeddings=True))


class PairCollator:
    """Single texts padded as usual; pair rows become one batch of 2B texts (all first texts, then all seconds)
    with B float targets, so one forward pass embeds both sides."""

    def __init__(self, pad_token_id: int):
        self.singles = PaddingCollator(pad_token_id, torch.long)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if "pair_input_ids" not in rows[0]:
            return self.singles(rows)
        texts = [{"input_ids": row["input_ids"]} for row in rows] + [{"input_ids": row["pair_input_ids"]} for row in rows]
        batch = self.singles(texts)
        batch["labels"] = torch.tensor([row["labels"] for row in rows], dtype=torch.float32)
        return batch


# ---------------------------------------------------------------------------------------------------- heads


def logistic_head(embeddings: np.ndarray, labels: np.ndarray, num_labels: int, c: float) -> tuple[np.ndarray, np.ndarray]:
    """Weight (classes, dim) and bias (classes,) of a scikit-learn logistic regression, as logits of a linear layer.

    Binary: scikit-learn keeps one vector w; logits [0, w.x + b] give the same softmax probabilities. A class absent
    from the labels gets a bias of -30 (probability ~1e-13), never predicted.
    """
    from sklearn.linear_model import LogisticRegression

    classifier = LogisticRegression(C=c, max_iter=1000).fit(embeddings, labels)
    weight = np.zeros((num_labels, embeddings.shape[1]), dtype=np.float32)
    bias = np.full(num_labels, -30.0, dtype=np.float32)
    present = classifier.classes_.astype(int)
    if len(present) == 2:
        weight[present[1]], bias[present[1]] = classifier.coef_[0], classifier.intercept_[0]
        bias[present[0]] = 0.0
    else:
        weight[present], bias[present] = classifier.coef_, classifier.intercept_
    return weight, bias


def linear_head(embeddings: np.ndarray, labels: np.ndarray, num_labels: int, epochs: int,
                lr: float) -> tuple[np.ndarray, np.ndarray]:
    """Weight and bias of a linear layer trained with cross-entropy (Adam, full batch) on fixed embeddings."""
    inputs = torch.as_tensor(embeddings, dtype=torch.float32)  # (examples, dim)
    targets = torch.as_tensor(labels, dtype=torch.long)
    layer = torch.nn.Linear(inputs.shape[1], num_labels)
    torch.nn.init.zeros_(layer.weight)  # zeros: deterministic, and the convex problem needs no random start
    torch.nn.init.zeros_(layer.bias)
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(epochs):
            optimizer.zero_grad()
            F.cross_entropy(layer(inputs), targets).backward()
            optimizer.step()
    return layer.weight.detach().numpy(), layer.bias.detach().numpy()


# ---------------------------------------------------------------------------------------------------- the task


class FewShotTask:
    """Classification by contrastive pairs then a head on embeddings (train.method: fewshot)."""

    name = "classification"
    text_answers = False
    batch_columns = ("input_ids", "pair_input_ids", "labels")

    def __init__(self) -> None:
        self.classification = ClassificationTask(regression=False)  # encoding, scoring and records are the same

    def prepare(self, splits: dict[str, Dataset], tokenizer, recipe: Recipe) -> dict[str, Dataset]:
        """Every split encoded as single texts; `train` becomes the pairs and `head_train` keeps the examples."""
        encoded = self.classification.prepare(splits, tokenizer, recipe)
        if "train" not in encoded:
            return encoded
        examples = encoded["train"]
        settings = recipe.train.fewshot
        if settings.pair_iterations is None:
            pairs = distinct_pairs(examples["labels"], recipe.train.seed, settings.max_pairs)
        else:
            pairs = generate_pairs(examples["labels"], settings.pair_iterations, recipe.train.seed, settings.max_pairs)
        ids, lengths = list(examples["input_ids"]), list(examples["length"])  # plain lists: per-row Arrow access is slow
        encoded["head_train"] = examples
        encoded["train"] = Dataset.from_dict({
            "input_ids": [ids[a] for a, _, _ in pairs],
            "pair_input_ids": [ids[b] for _, b, _ in pairs],
            "labels": [target for _, _, target in pairs],
            # Both sides are padded to the longer one in a 2B-row batch: twice the longer length is the row's cost
            # against the token budget.
            "length": [2 * max(lengths[a], lengths[b]) for a, b, _ in pairs],
        })
        return encoded

    def collator(self, tokenizer) -> PairCollator:
        return PairCollator(tokenizer.pad_token_id)

    def build_model(self, resolved: ResolvedModel, recipe: Recipe, label_names: list[str] | None) -> torch.nn.Module:
        from transformers import AutoModel

        assert label_names is not None
        try:
            body = AutoModel.from_pretrained(str(resolved.path))
        except Exception as exc:
            raise ModelError(f"cannot load {resolved.name} as an embedding body: {str(exc).splitlines()[0][:200]}",
                             "use an encoder model (BERT family), e.g. sentence-transformers/all-MiniLM-L6-v2") from None
        if not hasattr(body.config, "hidden_size"):
            raise ModelError(f"{resolved.name} has no hidden_size in its config", "use an encoder (BERT family) model")
        body.config.id2label = dict(enumerate(label_names))
        body.config.label2id = {name: i for i, name in enumerate(label_names)}
        return SentenceEmbeddingClassifier(body, len(label_names))

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Cosine-similarity loss: squared error between the pair's cosine similarity and its 1/0 target, summed."""
        targets = batch.pop("labels")  # (pairs,)
        embeddings = model(**batch, return_embeddings=True)  # (2 x pairs, dim), unit length
        first, second = embeddings.chunk(2)
        similarity = (first * second).sum(-1)  # (pairs,)
        return ((similarity - targets) ** 2).sum(), targets.shape[0]

    def loss_items(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["labels"].shape[0])  # pairs

    def fit_head(self, model: SentenceEmbeddingClassifier, encoded: dict[str, Dataset], collate, recipe: Recipe,
                 device: torch.device, amp_dtype: torch.dtype | None) -> None:
        """Fit the head on the training examples' embeddings and copy it into the model's linear layer."""
        from slingshot.inference import forward_logits

        examples = encoded["head_train"]
        embeddings = forward_logits(EmbeddingView(model), examples, collate, device=device, autocast_dtype=amp_dtype)
        weight, bias = fit_head_weights(embeddings, np.asarray(examples["labels"]), model.head.out_features,
                                        recipe.train.fewshot)
        with torch.no_grad():
            model.head.weight.copy_(torch.as_tensor(weight))
            model.head.bias.copy_(torch.as_tensor(bias))

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of the head on the embeddings, (batch, classes)."""
        return model(**batch).logits

    def outputs(self, logits: np.ndarray, encoded: Dataset) -> dict[str, np.ndarray]:
        return self.classification.outputs(logits, encoded)

    def metrics(self, outputs: dict[str, np.ndarray], encoded: Dataset, label_names: list[str] | None) -> dict[str, Any]:
        return self.classification.metrics(outputs, encoded, label_names)

    def eval_loss(self, logits: np.ndarray, encoded: Dataset) -> float:
        return self.classification.eval_loss(logits, encoded)

    def records(self, dataset: Dataset, outputs: dict[str, np.ndarray], label_names: list[str] | None) -> list[dict]:
        return self.classification.records(dataset, outputs, label_names)

    def save(self, model: SentenceEmbeddingClassifier, tokenizer, path: Path, adapter_path: Path | None = None) -> None:
        """The body as a Hugging Face and sentence-transformers folder, plus the head in head.safetensors.

        `SentenceTransformer(path)` loads the body with its mean pooling and normalisation; `AutoModel` loads the
        bare body; the head is `logits = embedding @ weight.T + bias` (fewshot_head.json says so).
        """
        from safetensors.torch import save_file

        model.body.save_pretrained(str(path), safe_serialization=True)
        tokenizer.save_pretrained(str(path))
        save_file({"weight": model.head.weight.detach().contiguous(), "bias": model.head.bias.detach().contiguous()},
                  str(path / HEAD_FILE))
        dim = model.config.hidden_size
        _write(path / "modules.json", [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ])
        _write(path / "1_Pooling" / "config.json", {"word_embedding_dimension": dim, "pooling_mode_mean_tokens": True})
        (path / "2_Normalize").mkdir(exist_ok=True)
        _write(path / HEAD_INFO_FILE, {
            "embedding": "mean of the last hidden states over real tokens, L2-normalised",
            "logits": f"embedding @ weight.T + bias, weight and bias in {HEAD_FILE}",
            "labels": [model.config.id2label[i] for i in range(model.head.out_features)],
        })

    def load_model(self, path: Path) -> torch.nn.Module:
        from safetensors.torch import load_file
        from transformers import AutoModel

        body = AutoModel.from_pretrained(str(path))
        model = SentenceEmbeddingClassifier(body, len(body.config.id2label))
        head = load_file(str(path / HEAD_FILE))
        with torch.no_grad():
            model.head.weight.copy_(head["weight"])
            model.head.bias.copy_(head["bias"])
        return model.eval()


def fit_head_weights(embeddings: np.ndarray, labels: np.ndarray, num_labels: int,
                     settings: FewShotSection) -> tuple[np.ndarray, np.ndarray]:
    """The head the recipe asks for, fitted on fixed embeddings: (weight (classes, dim), bias (classes,))."""
    if settings.head == "logistic":
        return logistic_head(embeddings, labels, num_labels, settings.head_c)
    return linear_head(embeddings, labels, num_labels, settings.head_epochs, settings.head_lr)


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
