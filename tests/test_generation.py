"""Generative fine-tuning: templates, loss masking, packing, LoRA, merging, decoding, and memorising through the loop."""

import json
import warnings

import pytest
import torch
from conftest import qa_pairs, write_jsonl

from slingshot.chat_template import TEMPLATES, encode_conversation, encode_prompt, render
from slingshot.errors import DataError, RecipeError, RunDirError
from slingshot.export import export_merged
from slingshot.models import load_tokenizer
from slingshot.recipe import GenerationSection, recipe_from_dict
from slingshot.tasks.generation import (
    IGNORE,
    GenerationCollator,
    GenerationTask,
    generate_answers,
    load_adapter_model,
    pack_rows,
)
from slingshot.train import train

CONVERSATION = [{"role": "user", "content": "What is the code name of project apollo?"},
                {"role": "assistant", "content": "golden beetle"}]


def plain_tokenizer(model_path):
    tokenizer = load_tokenizer(model_path)
    tokenizer.chat_template = TEMPLATES["plain"]
    return tokenizer


def causal_lm(model_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32).eval()


def gen_recipe(tmp_path, model, train_file, eval_file=None, **train_options):
    return recipe_from_dict({
        "name": "gen", "task": "generation", "model": {"name": str(model), "max_length": 64},
        "data": {"train": str(train_file), "eval": str(eval_file or train_file)},
        "train": {"epochs": 100, "lr": 3e-3, "tokens_per_batch": 1024, "threads": 1, "warmup_ratio": 0.0,
                  "eval_every": 20, "metric": "exact_match", "early_stopping": {"target": 100}, **train_options},
        "generation": {"max_new_tokens": 12},
        "similarity": {"enabled": False},
        "output": {"dir": str(tmp_path / "runs")},
    })


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_llama):
    """A LoRA run on the 20 project questions, trained through the real loop."""
    folder = tmp_path_factory.mktemp("lora-run")
    data = write_jsonl(folder / "qa.jsonl", qa_pairs())
    return train(gen_recipe(folder, tiny_llama, data, method="lora", lr=1e-2, epochs=300), show_progress=False)


# ------------------------------------------------------------------------------------------------ template and masking


def test_loss_falls_only_on_the_answer_and_its_eos(tiny_llama):
    tokenizer = plain_tokenizer(tiny_llama)
    input_ids, labels = encode_conversation(tokenizer, CONVERSATION)
    trained = [token for token, label in zip(input_ids, labels) if label != IGNORE]
    assert trained == labels[-len(trained):]  # the answer is one block at the end
    assert tokenizer.decode(trained) == "golden beetle</s>"
    prompt = encode_prompt(tokenizer, CONVERSATION[:1])
    assert input_ids[: len(prompt)] == prompt  # the model is prompted with exactly the text it was trained on
    assert all(label == IGNORE for label in labels[: len(prompt)])

    # the task's loss is the cross-entropy of those answer tokens alone, computed here by hand
    model = causal_lm(tiny_llama)
    batch = GenerationCollator(tokenizer)([{"input_ids": input_ids, "labels": labels}])
    loss, count = GenerationTask(GenerationSection()).loss(model, dict(batch))
    logits = model(input_ids=torch.tensor([input_ids])).logits[0]
    positions = [t for t in range(len(input_ids) - 1) if labels[t + 1] != IGNORE]
    by_hand = -sum(logits[t].log_softmax(-1)[input_ids[t + 1]] for t in positions)
    assert count == len(trained) == len(positions)
    assert float(loss.detach()) == pytest.approx(float(by_hand.detach()), rel=1e-5)


def test_plain_template_is_used_without_one_and_the_tokenizers_own_when_present(tiny_llama):
    from datasets import Dataset

    recipe = recipe_from_dict({"task": "generation", "model": {"name": str(tiny_llama)}})
    tokenizer = load_tokenizer(tiny_llama)
    task = GenerationTask(recipe.generation)
    split = Dataset.from_list([{"messages": CONVERSATION, "row": 1}])
    prompt = task.prepare({"eval": split}, tokenizer, recipe)["eval"]["prompt_ids"][0]
    text = "<s>User: What is the code name of project apollo?\nAssistant:"
    assert render(tokenizer, CONVERSATION[:1], generation_prompt=True) == text  # prepare set the template
    assert prompt == tokenizer(text, add_special_tokens=False)["input_ids"]

    tokenizer = load_tokenizer(tiny_llama)
    tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'assistant' %}=>{% endif %}<<{{ m['content'] }}>>"
                               "{% endfor %}{% if add_generation_prompt %}=>{% endif %}")
    prompt = task.prepare({"eval": split}, tokenizer, recipe)["eval"]["prompt_ids"][0]
    text = "<<What is the code name of project apollo?>>=>"
    assert render(tokenizer, CONVERSATION[:1], generation_prompt=True) == text  # the tokenizer's own, kept
    assert prompt == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_multi_turn_conversations_train_every_assistant_turn(tiny_llama):
    tokenizer = plain_tokenizer(tiny_llama)
    turns = CONVERSATION + [{"role": "user", "content": "And project borealis?"},
                            {"role": "assistant", "content": "red falcon"}]
    input_ids, labels = encode_conversation(tokenizer, turns)
    # untrained tokens shown as <unk>: what remains are the two answers, each with its EOS
    shown = tokenizer.decode([t if label != IGNORE else tokenizer.unk_token_id for t, label in zip(input_ids, labels)])
    assert [piece.strip() for piece in shown.split("<unk>") if piece.strip()] == ["golden beetle</s>", "red falcon</s>"]


# ------------------------------------------------------------------------------------------------ packing


def test_pack_rows_fills_rows_best_fit_and_never_overflows():
    rows = pack_rows([50, 30, 20, 10, 40, 60], capacity=64)
    assert sorted(i for row in rows for i in row) == list(range(6))
    lengths = [50, 30, 20, 10, 40, 60]
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert rows == [[5], [0, 3], [4, 2], [1]]  # 60 | 50+10 | 40+20 | 30, longest first into the fullest row


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_gpt2"])
def test_a_packed_conversation_has_the_logits_it_has_alone(family, request):
    model_path = request.getfixturevalue(family)
    tokenizer = plain_tokenizer(model_path)
    model = causal_lm(model_path)
    conversations = [[{"role": "user", "content": "the plot was dull"}, {"role": "assistant", "content": "a sad film"}],
                     [{"role": "user", "content": "it was fun"}, {"role": "assistant", "content": "great"}]]
    encoded = [encode_conversation(tokenizer, c) for c in conversations]
    from datasets import Dataset

    split = Dataset.from_dict({"input_ids": [e[0] for e in encoded], "labels": [e[1] for e in encoded],
                               "length": [len(e[0]) for e in encoded]})
    packed = GenerationTask.pack(split, max_length=64)
    assert len(packed) == 1  # both in one row
    row = packed[0]
    batch = GenerationCollator(tokenizer)([row, {**row, "input_ids": row["input_ids"][:5], "labels": row["labels"][:5],
                                                 "position_ids": row["position_ids"][:5]}])  # with a padded row
    together = GenerationTask._logits(model, dict(batch))[0]
    start = 0
    for ids, _ in sorted(encoded, key=lambda e: -len(e[0])):  # packed longest first
        alone = model(input_ids=torch.tensor([ids])).logits[0]
        assert torch.allclose(together[start: start + len(ids)], alone, atol=1e-5)
        start += len(ids)
    assert row["labels"][0] == IGNORE and row["labels"][len(sorted(encoded, key=lambda e: -len(e[0]))[0][0])] == IGNORE


# ------------------------------------------------------------------------------------------------ decoding


def test_generation_stops_at_eos_and_otherwise_at_max_new_tokens(tiny_llama):
    tokenizer = plain_tokenizer(tiny_llama)
    model = causal_lm(tiny_llama)
    prompt = encode_prompt(tokenizer, CONVERSATION[:1])
    word = tokenizer.convert_tokens_to_ids("▁beetle")
    settings = GenerationSection(max_new_tokens=7)
    for favoured, expected in ((tokenizer.eos_token_id, ""), (word, " ".join(["beetle"] * 7))):
        head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size)
        torch.nn.init.zeros_(head.weight)
        with torch.no_grad():
            head.bias.zero_()
            head.bias[favoured] = 10.0  # this token is always the most likely
        model.lm_head = head
        out = generate_answers(model, tokenizer, [prompt], settings)
        assert out["predicted"] == [expected]
        assert out["stopped_at_eos"] == [favoured == tokenizer.eos_token_id]
        assert out["new_tokens"] == [0 if favoured == tokenizer.eos_token_id else 7]


@pytest.mark.parametrize("family, beams", [("tiny_llama", 1), ("tiny_gpt2", 1), ("tiny_llama", 3)])
def test_left_padded_batches_generate_what_each_prompt_generates_alone(family, beams, request):
    model_path = request.getfixturevalue(family)
    tokenizer = plain_tokenizer(model_path)
    model = causal_lm(model_path)
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": text}])
               for text in ("a", "the movie was quite a good film and the actors were great", "dull plot")]
    settings = GenerationSection(max_new_tokens=6, num_beams=beams)
    together = generate_answers(model, tokenizer, prompts, settings)["predicted"]
    assert together == [generate_answers(model, tokenizer, [p], settings)["predicted"][0] for p in prompts]


def test_sampling_is_seeded_and_leaves_the_global_random_state_alone(tiny_llama):
    tokenizer = plain_tokenizer(tiny_llama)
    model = causal_lm(tiny_llama)
    prompt = encode_prompt(tokenizer, CONVERSATION[:1])
    settings = GenerationSection(max_new_tokens=8, temperature=1.5, top_p=0.95)
    torch.manual_seed(7)
    before = torch.rand(1)
    torch.manual_seed(7)
    first = generate_answers(model, tokenizer, [prompt], settings, seed=1)["predicted"]
    assert torch.rand(1) == before
    assert generate_answers(model, tokenizer, [prompt], settings, seed=1)["predicted"] == first


# ------------------------------------------------------------------------------------------------ the whole path


def test_memorises_twenty_answers_through_the_real_loop(tmp_path, tiny_llama):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_pairs())
    result = train(gen_recipe(tmp_path, tiny_llama, data), show_progress=False)
    assert result.metrics["eval"]["exact_match"] >= 90
    assert result.metrics["eval"]["stopped_at_eos"] == 1.0
    records = [json.loads(line) for line in result.run.predictions.read_text().splitlines()]
    assert records[0]["prompt"] == "What is the code name of project apollo?" and records[0]["gold"] == ["golden beetle"]


def test_packed_training_memorises_too(tmp_path, tiny_llama):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_pairs())
    recipe = gen_recipe(tmp_path, tiny_llama, data)
    recipe.generation.packing = True
    result = train(recipe, show_progress=False)
    assert result.metrics["eval"]["exact_match"] >= 90
    assert result.summary["train_examples"] == 20
    assert result.summary["train_rows"] < 20  # packed rows hold several conversations


def test_lora_trains_only_the_adapter(lora_run, tiny_llama):
    from safetensors.torch import load_file

    assert lora_run.metrics["eval"]["exact_match"] >= 90
    saved = load_file(str(lora_run.run.model / "adapter_model.safetensors"))
    assert saved and all("lora_" in name for name in saved)  # model/ holds the adapter alone
    assert not (lora_run.run.model / "model.safetensors").exists()
    base = causal_lm(tiny_llama).state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # peft asks for transformers' deprecated is_gradient_checkpointing
        adapted = load_adapter_model(lora_run.run.model).get_base_model().state_dict()
    for name, weight in adapted.items():
        if "lora_" not in name:
            assert torch.equal(weight, base[name.replace(".base_layer", "")]), name
    targets = json.loads((lora_run.run.model / "adapter_config.json").read_text())["target_modules"]
    assert set(targets) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_merged_export_gives_the_logits_of_base_plus_adapter(lora_run, tmp_path):
    target = export_merged(lora_run.run.path, tmp_path / "merged")
    merged = causal_lm(target)
    adapted = load_adapter_model(lora_run.run.model).eval()
    ids = torch.tensor([[1, 20, 30, 40, 50, 60]])
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, atol=1e-5)
    assert not any("lora" in name for name in merged.state_dict())
    assert (target / "chat_template.jinja").is_file()  # it prompts the way it was trained
    with pytest.raises(RunDirError, match="already exists"):
        export_merged(lora_run.run.path, target)


def test_merging_a_full_fine_tuning_run_is_refused(tmp_path, tiny_llama):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_pairs(4))
    result = train(gen_recipe(tmp_path, tiny_llama, data, epochs=1), show_progress=False)
    with pytest.raises(RunDirError, match="nothing to merge"):
        export_merged(result.run.path)


def test_gradient_checkpointing_changes_no_arithmetic(tmp_path, tiny_llama):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_pairs(8))
    runs = [train(gen_recipe(tmp_path / str(flag), tiny_llama, data, epochs=3, method="lora", lr=1e-2,
                             gradient_checkpointing=flag), show_progress=False) for flag in (False, True)]
    assert runs[1].metrics["eval"]["loss"] == pytest.approx(runs[0].metrics["eval"]["loss"], rel=1e-4)


# ------------------------------------------------------------------------------------------------ data and errors


def test_docs2qa_chat_files_and_system_prompts_are_read(tmp_path, tiny_llama):
    from slingshot.chat_data import load_chat_data

    rows = [{"messages": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["completion"]}]}
            for p in qa_pairs(6)]
    rows.append({"messages": [{"role": "user", "content": "unanswered"}]})
    rows.append({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]})
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    recipe = recipe_from_dict({"task": "generation", "model": {"name": str(tiny_llama)}, "data": {"train": str(path)},
                               "generation": {"system_prompt": "Answer briefly."}})
    loaded = load_chat_data(recipe)
    assert len(loaded.splits["train"]) + len(loaded.splits["eval"]) == 6
    assert loaded.skipped["train"].reasons == {"no answer (no assistant turn)": 1,
                                               "no prompt (empty or missing user turn)": 1}
    assert loaded.splits["train"][0]["messages"][0] == {"role": "system", "content": "Answer briefly."}


def test_malformed_messages_name_the_file_and_line(tmp_path, tiny_llama):
    from slingshot.chat_data import load_chat_data

    path = write_jsonl(tmp_path / "train.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                                {"role": "bot", "content": "hello"}]}])
    recipe = recipe_from_dict({"task": "generation", "model": {"name": str(tiny_llama)}, "data": {"train": str(path)}})
    with pytest.raises(DataError, match=r"train.jsonl:1: message 1 is not a \{role, content\} object"):
        load_chat_data(recipe)
    write_jsonl(path, [{"text": "hi", "label": "x"}])
    with pytest.raises(DataError, match="neither a 'messages' column .* columns found: text, label"):
        load_chat_data(recipe)


def test_qlora_without_cuda_is_one_clear_error_naming_lora(tmp_path, tiny_llama):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present: QLoRA runs here (test_qlora_trains_on_cuda)")
    data = write_jsonl(tmp_path / "qa.jsonl", qa_pairs(4))
    with pytest.raises(RecipeError, match="qlora needs a CUDA GPU") as error:
        train(gen_recipe(tmp_path, tiny_llama, data, method="qlora"), show_progress=False)
    assert "train.method: lora" in error.value.hint
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="QLoRA needs CUDA (bitsandbytes 4-bit kernels): no GPU here")
def test_qlora_trains_on_cuda(tmp_path, tiny_llama):
    pytest.importorskip("bitsandbytes", reason="pip install slingshot-lm[qlora]")
    data = write_jsonl(tmp_path / "qa.jsonl", qa_pairs())
    result = train(gen_recipe(tmp_path, tiny_llama, data, method="qlora", lr=1e-2, epochs=60), show_progress=False)
    assert result.metrics["eval"]["exact_match"] >= 90
    assert (result.run.model / "adapter_config.json").is_file()
