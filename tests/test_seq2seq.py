"""Encoder-decoder fine-tuning (task seq2seq): loss masking, decoding, memorising through the loop, LoRA, merging,
predict, docs2qa chat data, and the errors a user meets."""

import json

import pytest
import torch
from conftest import qa_pairs, write_jsonl

from slingshot.chat_data import source_text
from slingshot.errors import DataError, ModelError, RecipeError
from slingshot.export import export_merged
from slingshot.models import load_tokenizer
from slingshot.recipe import GenerationSection, recipe_from_dict
from slingshot.tasks.generation import IGNORE, load_adapter_model
from slingshot.tasks.seq2seq import Seq2SeqCollator, Seq2SeqTask, generate_targets
from slingshot.train import train

QUESTION = "What is the code name of project apollo?"


def seq2seq_model(path):
    from transformers import AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM.from_pretrained(str(path), dtype=torch.float32).eval()


def s2s_recipe(tmp_path, model, train_file, eval_file=None, **train_options):
    return recipe_from_dict({
        "name": "s2s", "task": "seq2seq", "model": {"name": str(model), "max_length": 64},
        "data": {"train": str(train_file), "eval": str(eval_file or train_file)},
        "train": {"epochs": 300, "lr": 3e-3, "tokens_per_batch": 1024, "threads": 1, "warmup_ratio": 0.0,
                  "eval_every": 20, "metric": "exact_match", "early_stopping": {"target": 100}, **train_options},
        "generation": {"max_new_tokens": 12},
        "similarity": {"enabled": False},
        "output": {"dir": str(tmp_path / "runs")},
    })


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_t5):
    """A short LoRA run on the 20 project questions, trained through the real loop."""
    folder = tmp_path_factory.mktemp("s2s-lora-run")
    data = write_jsonl(folder / "qa.jsonl", qa_pairs())
    return train(s2s_recipe(folder, tiny_t5, data, method="lora", lr=1e-2, epochs=30), show_progress=False)


# ------------------------------------------------------------------------------------------------ loss masking


def test_loss_falls_only_on_target_tokens_and_counts_them(tiny_t5):
    tokenizer = load_tokenizer(tiny_t5)
    model = seq2seq_model(tiny_t5)
    rows = [{"input_ids": tokenizer(QUESTION)["input_ids"], "labels": tokenizer(text_target="golden beetle")["input_ids"]},
            {"input_ids": tokenizer("project borealis?")["input_ids"], "labels": tokenizer(text_target="red")["input_ids"]}]
    batch = Seq2SeqCollator(tokenizer)(rows)
    short = len(rows[1]["labels"])
    assert batch["labels"][1, short:].eq(IGNORE).all() and batch["labels"][1, :short].ne(IGNORE).all()
    assert batch["attention_mask"][1].sum() == len(rows[1]["input_ids"])  # source padding masked
    assert rows[0]["labels"][-1] == tokenizer.eos_token_id  # the model learns to stop

    loss, count = Seq2SeqTask(GenerationSection()).loss(model, dict(batch))
    # by hand: each row alone, unpadded, the decoder reading <start> + its target shifted right
    total, tokens = 0.0, 0
    with torch.no_grad():
        for row in rows:
            labels = torch.tensor(row["labels"])
            decoder_input_ids = torch.tensor([[model.config.decoder_start_token_id] + row["labels"][:-1]])
            logits = model(input_ids=torch.tensor([row["input_ids"]]), decoder_input_ids=decoder_input_ids).logits[0]
            total -= float(logits.log_softmax(-1).gather(-1, labels[:, None]).sum())
            tokens += len(row["labels"])
        # and the mean is what the model's own loss gives for the padded batch (-100 ignored)
        own = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert count == tokens == len(rows[0]["labels"]) + short
    assert float(loss.detach()) / count == pytest.approx(total / tokens, rel=1e-5)
    assert float(loss.detach()) / count == pytest.approx(float(own), rel=1e-5)


# ------------------------------------------------------------------------------------------------ decoding


@pytest.mark.parametrize("beams", [1, 3])
def test_right_padded_batches_generate_what_each_source_generates_alone(tiny_t5, beams):
    tokenizer = load_tokenizer(tiny_t5)
    model = seq2seq_model(tiny_t5)
    sources = [tokenizer(text)["input_ids"] for text in ("a", QUESTION, "project borealis and project cobalt")]
    settings = GenerationSection(max_new_tokens=6, num_beams=beams)
    together = generate_targets(model, tokenizer, sources, settings)
    assert together["predicted"] == [generate_targets(model, tokenizer, [s], settings)["predicted"][0] for s in sources]
    assert all(n <= 6 for n in together["new_tokens"])


def test_generation_stops_at_eos_and_otherwise_at_max_new_tokens(tiny_t5):
    tokenizer = load_tokenizer(tiny_t5)
    model = seq2seq_model(tiny_t5)
    word = tokenizer.convert_tokens_to_ids("▁apollo")
    for favoured, expected in ((tokenizer.eos_token_id, ""), (word, " ".join(["apollo"] * 5))):
        model.lm_head = torch.nn.Linear(model.config.d_model, model.config.vocab_size)
        with torch.no_grad():
            model.lm_head.weight.zero_()
            model.lm_head.bias.zero_()
            model.lm_head.bias[favoured] = 10.0  # this token is always the most likely
        out = generate_targets(model, tokenizer, [tokenizer(QUESTION)["input_ids"]], GenerationSection(max_new_tokens=5))
        assert out["predicted"] == [expected]
        assert out["stopped_at_eos"] == [favoured == tokenizer.eos_token_id]
        assert out["new_tokens"] == [0 if favoured == tokenizer.eos_token_id else 5]


def test_sampling_is_seeded_and_leaves_the_global_random_state_alone(tiny_t5):
    tokenizer = load_tokenizer(tiny_t5)
    model = seq2seq_model(tiny_t5)
    settings = GenerationSection(max_new_tokens=8, temperature=1.5, top_p=0.95)
    sources = [tokenizer(QUESTION)["input_ids"]]
    torch.manual_seed(7)
    before = torch.rand(1)
    torch.manual_seed(7)
    first = generate_targets(model, tokenizer, sources, settings, seed=1)["predicted"]
    assert torch.rand(1) == before
    assert generate_targets(model, tokenizer, sources, settings, seed=1)["predicted"] == first


# ------------------------------------------------------------------------------------------------ the whole path


def test_memorises_twenty_pairs_through_the_real_loop(tmp_path, tiny_t5, tiny_bert):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_pairs())
    recipe = s2s_recipe(tmp_path, tiny_t5, data)
    recipe.similarity.enabled = True
    recipe.similarity.model = str(tiny_bert)  # the answer-similarity evaluation runs too (a random encoder here)
    result = train(recipe, show_progress=False)
    metrics = result.metrics["eval"]
    assert metrics["exact_match"] >= 90 and metrics["stopped_at_eos"] == 1.0
    assert metrics["similarity"]["pairs"] == 20
    records = [json.loads(line) for line in result.run.predictions.read_text().splitlines()]
    assert records[0]["prompt"] == QUESTION and records[0]["gold"] == [qa_pairs()[0]["completion"]]
    # real tokens count sources and targets: more than the sources alone
    tokenizer = load_tokenizer(tiny_t5)
    source_tokens = sum(len(tokenizer(p["prompt"])["input_ids"]) for p in qa_pairs())
    assert result.summary["real_tokens"] > result.summary["examples_seen"] / 20 * source_tokens
    assert (result.run.model / "model.safetensors").is_file()
    # the saved folder is a plain Hugging Face encoder-decoder: it loads and answers without Slingshot
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    saved, saved_tokenizer = AutoModelForSeq2SeqLM.from_pretrained(result.run.model), AutoTokenizer.from_pretrained(result.run.model)
    output = saved.generate(**saved_tokenizer([QUESTION], return_tensors="pt"), max_new_tokens=12)
    assert saved_tokenizer.decode(output[0], skip_special_tokens=True) == records[0]["predicted"]


def test_bart_memorises_too_and_its_lora_adapts_q_proj_and_v_proj(tmp_path, tiny_bart):
    from slingshot.models import resolve_model

    data = write_jsonl(tmp_path / "qa.jsonl", qa_pairs())
    recipe = s2s_recipe(tmp_path, tiny_bart, data)
    result = train(recipe, show_progress=False)  # BART's decoder starts from </s> and writes a forced <s> first
    assert result.metrics["eval"]["exact_match"] >= 90 and result.metrics["eval"]["stopped_at_eos"] == 1.0
    recipe.train.method = "lora"
    model = Seq2SeqTask(recipe.generation).build_model(resolve_model(str(tiny_bart)), recipe, None)
    adapted = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")}
    assert adapted == {"q_proj", "v_proj"}


def test_lora_trains_only_the_adapter(lora_run, tiny_t5):
    from safetensors.torch import load_file

    evaluations = lora_run.metrics["evaluations"]
    assert evaluations[-1]["loss"] < evaluations[0]["loss"]
    saved = load_file(str(lora_run.run.model / "adapter_model.safetensors"))
    assert saved and all("lora_" in name for name in saved)  # model/ holds the adapter alone
    assert not (lora_run.run.model / "model.safetensors").exists()
    base = seq2seq_model(tiny_t5).state_dict()
    adapted = load_adapter_model(lora_run.run.model).get_base_model().state_dict()
    for name, weight in adapted.items():
        if "lora_" not in name:
            assert torch.equal(weight, base[name.replace(".base_layer", "")]), name
    config = json.loads((lora_run.run.model / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"q", "v"} and config["task_type"] == "SEQ_2_SEQ_LM"


def test_merged_export_gives_the_outputs_of_base_plus_adapter(lora_run, tmp_path):
    target = export_merged(lora_run.run.path, tmp_path / "merged")
    merged = seq2seq_model(target)
    adapted = load_adapter_model(lora_run.run.model).eval()
    tokenizer = load_tokenizer(target)
    inputs = tokenizer([QUESTION], return_tensors="pt")
    decoder_input_ids = torch.tensor([[0, 20, 30, 40]])
    with torch.no_grad():
        assert torch.allclose(merged(**inputs, decoder_input_ids=decoder_input_ids).logits,
                              adapted(**inputs, decoder_input_ids=decoder_input_ids).logits, atol=1e-5)
    assert not any("lora" in name for name in merged.state_dict())
    settings = GenerationSection(max_new_tokens=8, num_beams=2)
    sources = [inputs["input_ids"][0].tolist()]
    assert generate_targets(merged, tokenizer, sources, settings) == generate_targets(adapted, tokenizer, sources, settings)


def test_predict_cli_answers_prompts_and_files(lora_run, tmp_path, cli):
    run_dir = lora_run.run.path
    expected = next(r for r in map(json.loads, lora_run.run.predictions.read_text().splitlines()) if r["prompt"] == QUESTION)
    code, out, err = cli("predict", run_dir, "--prompt", QUESTION, "--json")
    assert code == 0, err
    assert json.loads(out)["predicted"] == expected["predicted"]  # the adapter merged in memory: same answer
    code, out, err = cli("predict", run_dir, "--prompt", QUESTION, "--num-beams", "3", "--max-new-tokens", "2", "--json")
    assert code == 0, err
    assert json.loads(out)["new_tokens"] <= 2
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p["prompt"]} for p in qa_pairs(3)])
    code, _, err = cli("predict", run_dir, "--input", prompts, "--output", tmp_path / "out.jsonl")
    assert code == 0, err
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["prompt"] for line in lines] == [p["prompt"] for p in qa_pairs(3)]
    code, _, err = cli("predict", run_dir, "some text")
    assert code == 2 and "writes answers to prompts" in err


# ------------------------------------------------------------------------------------------------ data and errors


def test_docs2qa_chat_jsonl_becomes_question_to_answer(tmp_path, tiny_t5):
    from slingshot.chat_data import load_chat_data

    rows = [{"messages": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["completion"]}]}
            for p in qa_pairs(6)]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    recipe = recipe_from_dict({"task": "seq2seq", "model": {"name": str(tiny_t5)},
                               "data": {"train": str(path), "eval": str(path)}})
    loaded = load_chat_data(recipe)
    tokenizer = load_tokenizer(tiny_t5)
    encoded = Seq2SeqTask(recipe.generation).prepare(loaded.splits, tokenizer, recipe)["train"]
    assert encoded[0]["input_ids"] == tokenizer(qa_pairs()[0]["prompt"])["input_ids"]  # the question alone
    assert encoded[0]["labels"] == tokenizer(text_target=qa_pairs()[0]["completion"])["input_ids"]
    assert encoded[0]["length"] == len(encoded[0]["input_ids"]) + len(encoded[0]["labels"])  # the batch cost

    system = [{"role": "system", "content": "Answer briefly."}]
    assert source_text(system + rows[0]["messages"]) == f"Answer briefly.\n{QUESTION}"
    turns = rows[0]["messages"] + [{"role": "user", "content": "And borealis?"}, {"role": "assistant", "content": "x"}]
    assert source_text(turns) == f"User: {QUESTION}\nAssistant: golden beetle\nUser: And borealis?"


def test_long_sources_and_targets_are_cut_and_counted(tmp_path, tiny_t5):
    from datasets import Dataset

    recipe = recipe_from_dict({"task": "seq2seq", "model": {"name": str(tiny_t5), "max_length": 8},
                               "generation": {"max_new_tokens": 3}})
    tokenizer = load_tokenizer(tiny_t5)
    split = Dataset.from_list([{"messages": [{"role": "user", "content": QUESTION},
                                             {"role": "assistant", "content": "golden beetle and more"}], "row": 1}])
    row = Seq2SeqTask(recipe.generation).prepare({"eval": split}, tokenizer, recipe)["eval"][0]
    assert len(row["input_ids"]) == 8 and row["input_ids"][-1] == tokenizer.eos_token_id and row["truncated"]
    assert len(row["labels"]) == 3 and row["labels"][-1] == tokenizer.eos_token_id


def test_a_decoder_only_model_is_one_clear_error_naming_task_generation(tmp_path, tiny_llama):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_pairs(4))
    with pytest.raises(ModelError, match="not an encoder-decoder") as error:
        train(s2s_recipe(tmp_path, tiny_llama, data), show_progress=False)
    assert "task: generation" in error.value.hint and "T5" in error.value.hint
    assert not (tmp_path / "runs").exists()  # nothing written


def test_a_missing_target_column_names_the_columns_found(tmp_path, tiny_t5):
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"source": p["prompt"], "answer": p["completion"]} for p in qa_pairs(4)])
    recipe = s2s_recipe(tmp_path, tiny_t5, data)
    recipe.generation.prompt_column = "source"
    with pytest.raises(DataError, match="column 'completion' not found; columns found: source, answer") as error:
        train(recipe, show_progress=False)
    assert "generation.completion_column" in error.value.hint


def test_packing_and_chat_templates_are_refused_for_seq2seq(tiny_t5):
    with pytest.raises(RecipeError, match="generation.packing and generation.template are for task generation"):
        recipe_from_dict({"task": "seq2seq", "model": {"name": str(tiny_t5)}, "generation": {"packing": True}})


def test_plan_and_inspect_read_a_seq2seq_recipe(tmp_path, tiny_t5):
    from slingshot.checks import inspect_data
    from slingshot.plan import make_plan
    from slingshot.plan.catalogue import find_in_catalogue

    data = write_jsonl(tmp_path / "qa.jsonl", qa_pairs())
    recipe = s2s_recipe(tmp_path, tiny_t5, data)
    plan = make_plan(recipe, "cpu-2core")
    assert plan.model.kind == "seq2seq" and plan.data.train_rows == 20
    assert plan.methods["lora"].memory.total_mb < plan.methods["full"].memory.total_mb
    assert plan.shortlist and {find_in_catalogue(s.model).kind for s in plan.shortlist} == {"seq2seq"}
    recipe.generation.max_new_tokens = 3
    report = inspect_data(recipe)
    assert report.splits["train"].token_lengths["max"] == max(len(load_tokenizer(tiny_t5)(p["prompt"])["input_ids"])
                                                            for p in qa_pairs())
    assert any("answers longer than generation.max_new_tokens=3" in p.check for p in report.problems)


def test_serve_answers_prompts_and_chats_with_a_seq2seq_run(tmp_path, tiny_t5):
    import httpx
    import openai
    from test_serve import Server

    from slingshot.evaluate import predict_prompts
    from slingshot.serve import ServeLimits

    data = write_jsonl(tmp_path / "qa.jsonl", qa_pairs())
    run = train(s2s_recipe(tmp_path, tiny_t5, data), show_progress=False).run.path
    server = Server(run, ServeLimits(max_text_chars=300, max_new_tokens=32))
    try:
        prompts = [pair["prompt"] for pair in qa_pairs()[:3]]
        expected = [record["predicted"] for record in predict_prompts(server.loaded, prompts)]
        batched = httpx.post(f"{server.url}/v1/predict", json={"prompts": prompts}).json()
        assert [p["text"] for p in batched["predictions"]] == expected
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(model="any", messages=[{"role": "user", "content": prompts[1]}])
        assert answer.choices[0].message.content == expected[1]
        assert httpx.get(f"{server.url}/v1/model").json()["task"] == "seq2seq"
        assert httpx.post(f"{server.url}/v1/predict", json={"texts": ["x"]}).status_code == 422
    finally:
        server.stop()
