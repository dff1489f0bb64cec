import json
import os
import sys

import pytest
import torch
import yaml
from conftest import toy_recipe, toy_rows, write_csv

import slingshot.train as train_module
from slingshot.errors import RecipeError, RunDirError
from slingshot.recipe import recipe_from_dict
from slingshot.train import train


def run(tmp_path, model, data, **train_fields):
    return train(recipe_from_dict(toy_recipe(tmp_path, model, data, **train_fields)), show_progress=False)


def weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_tiny_bert_learns_and_writes_the_run_directory(tmp_path, tiny_bert, toy_data):
    result = run(tmp_path, tiny_bert, toy_data, epochs=8)
    folder = result.run.path
    assert result.metrics["eval"]["accuracy"] >= 0.9
    for name in ("recipe.yaml", "metrics.json", "predictions.jsonl", "train_log.jsonl", "summary.json",
                 "model/config.json", "model/model.safetensors", "model/tokenizer.json"):
        assert (folder / name).is_file(), name
    assert not (folder / "checkpoints").exists()  # a finished run keeps no optimizer state
    config = json.loads((folder / "model/config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    predictions = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 40
    assert {"row", "text", "gold", "predicted", "probability", "probabilities"} <= set(predictions[0])
    summary = json.loads((folder / "summary.json").read_text())
    for key in ("wall_time_s", "cpu_time_s", "peak_rss_mb", "real_tokens_per_s", "padding_fraction",
                "estimated_cost_usd", "versions"):
        assert key in summary
    assert summary["padding_fraction"] < 0.15
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert any("eval" in line for line in log) and any("loss" in line for line in log)
    steps = [line for line in log if "loss" in line]
    if sys.platform == "linux":  # memory over time, for finding where a run's peak comes from
        assert all(0 < line["rss_mb"] <= line["peak_rss_mb"] for line in steps)
        assert summary["peak_rss_mb"] >= max(line["peak_rss_mb"] for line in steps)


def test_saved_model_loads_in_a_transformers_pipeline(tmp_path, tiny_bert, toy_data):
    from transformers import pipeline

    result = run(tmp_path, tiny_bert, toy_data, epochs=8)
    classify = pipeline("text-classification", model=str(result.run.model), device="cpu")
    outputs = classify(["the film was great", "the plot was awful"])
    assert [o["label"] for o in outputs] == ["pos", "neg"]


def test_gpt2_classifier_gets_pad_equal_to_eos(tmp_path, tiny_gpt2, toy_data):
    result = run(tmp_path, tiny_gpt2, toy_data, epochs=6)
    config = json.loads((result.run.model / "config.json").read_text())
    assert config["pad_token_id"] == config["eos_token_id"]
    assert result.metrics["eval"]["accuracy"] >= 0.8


def test_lora_saves_adapter_and_merged_model(tmp_path, tiny_bert, toy_data):
    from transformers import pipeline

    result = run(tmp_path, tiny_bert, toy_data, method="lora", epochs=20, lr=5e-3, lora={"r": 8, "alpha": 16})
    assert (result.run.adapter / "adapter_config.json").is_file()
    assert not (result.run.model / "adapter_config.json").exists()  # model/ holds plain merged weights
    assert result.summary["parameters"]["trainable"] < result.summary["parameters"]["total"] / 2
    assert result.metrics["eval"]["accuracy"] >= 0.75
    # the merged weights predict what the trained adapter predicted
    predictions = [json.loads(line) for line in (result.run.predictions).read_text().splitlines()]
    merged = pipeline("text-classification", model=str(result.run.model), device="cpu")
    assert [o["label"] for o in merged([p["text"] for p in predictions])] == [p["predicted"] for p in predictions]


def test_regression_learns_a_score(tmp_path, tiny_bert):
    rows = [(text, 1.0 if label == "pos" else 0.0) for text, label in toy_rows(160, seed=1)]
    data = {"train": write_csv(tmp_path / "train.csv", rows),
            "eval": write_csv(tmp_path / "dev.csv", [(t, 1.0 if l == "pos" else 0.0) for t, l in toy_rows(40, 2)])}
    raw = toy_recipe(tmp_path, tiny_bert, data, epochs=8)
    raw["task"] = "regression"
    result = train(recipe_from_dict(raw), show_progress=False)
    assert result.metrics["eval"]["pearson"] > 0.8
    assert result.metrics["best_metric"] == "rmse"


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path, tiny_bert, toy_data):
    fields = dict(epochs=3, eval_every=4, checkpoint_every=4)  # checkpoints at steps 4, 8, ...; dropout stays on
    straight = run(tmp_path / "a", tiny_bert, toy_data, **fields)
    raw = toy_recipe(tmp_path / "b", tiny_bert, toy_data, **fields)
    stopped = train(recipe_from_dict(raw), show_progress=False, stop_after_steps=10)
    assert stopped.interrupted and (stopped.run.path / "checkpoints" / "last").is_dir()
    resumed = train(recipe_from_dict(raw), show_progress=False, resume=True)
    assert resumed.summary["optimizer_steps"] == straight.summary["optimizer_steps"]
    a, b = weights(straight.run.model), weights(resumed.run.model)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    assert resumed.metrics["eval"]["accuracy"] == straight.metrics["eval"]["accuracy"]


def test_finished_run_is_never_overwritten_without_the_flag(tmp_path, tiny_bert, toy_data):
    result = run(tmp_path, tiny_bert, toy_data, epochs=1)
    before = (result.run.model / "model.safetensors").read_bytes()
    with pytest.raises(RunDirError, match="already holds a finished run"):
        run(tmp_path, tiny_bert, toy_data, epochs=1)
    assert (result.run.model / "model.safetensors").read_bytes() == before
    raw = toy_recipe(tmp_path, tiny_bert, toy_data, epochs=1)
    train(recipe_from_dict(raw), show_progress=False, overwrite=True)


def test_interrupted_run_asks_for_resume(tmp_path, tiny_bert, toy_data):
    raw = toy_recipe(tmp_path, tiny_bert, toy_data, epochs=2)
    train(recipe_from_dict(raw), show_progress=False, stop_after_steps=2)
    with pytest.raises(RunDirError) as error:
        train(recipe_from_dict(raw), show_progress=False)
    assert "--resume" in error.value.hint


def test_early_stopping_stops_and_keeps_the_best_model(tmp_path, tiny_bert, toy_data):
    result = run(tmp_path, tiny_bert, toy_data, epochs=40, eval_every=5, lr=3e-3,
                 early_stopping={"patience": 2, "min_delta": 0.0})
    evaluations = result.metrics["evaluations"]
    assert result.summary["optimizer_steps"] < 40 * 10  # stopped before the last epoch
    best = max(e["accuracy"] for e in evaluations)
    assert result.metrics["eval"]["accuracy"] == pytest.approx(best)
    assert evaluations[-1]["best"] is False and evaluations[-2]["best"] is False


def test_gradient_accumulation_and_cosine_schedule_run(tmp_path, tiny_bert, toy_data):
    result = run(tmp_path, tiny_bert, toy_data, epochs=2, grad_accum=3, schedule="cosine")
    assert result.summary["optimizer_steps"] >= 2


def test_training_stops_when_the_target_metric_is_reached(tmp_path, tiny_bert, toy_data):
    result = run(tmp_path, tiny_bert, toy_data, epochs=20, eval_every=2, early_stopping={"target": 0.8})
    assert result.metrics["evaluations"][-1]["accuracy"] >= 0.8
    assert result.summary["optimizer_steps"] < 200
    assert all(e["accuracy"] < 0.8 for e in result.metrics["evaluations"][:-1])


def test_resume_refuses_a_changed_recipe(tmp_path, tiny_bert, toy_data):
    raw = toy_recipe(tmp_path, tiny_bert, toy_data, epochs=2)
    train(recipe_from_dict(raw), show_progress=False, stop_after_steps=2)
    raw["train"]["lr"] = 1e-2
    with pytest.raises(RunDirError, match="recipe changed since run .* started: train.lr"):
        train(recipe_from_dict(raw), show_progress=False, resume=True)


def test_resume_accepts_a_run_that_saved_the_number_auto_resolves_to(tmp_path, tiny_bert, toy_data):
    raw = toy_recipe(tmp_path, tiny_bert, toy_data, epochs=2, lr=1e-4)  # as runs saved before train.lr had auto
    train(recipe_from_dict(raw), show_progress=False, stop_after_steps=2)
    raw["train"]["lr"] = "auto"  # 1e-4 for full fine-tuning: the same computation
    train(recipe_from_dict(raw), show_progress=False, resume=True, stop_after_steps=3)  # not refused
    raw["train"]["method"] = "lora"  # and auto is 1e-3 there: a different computation
    with pytest.raises(RunDirError, match="started: train.method"):
        train(recipe_from_dict(raw), show_progress=False, resume=True)


def test_resume_may_change_the_thread_count(tmp_path, tiny_bert, toy_data):
    raw = toy_recipe(tmp_path, tiny_bert, toy_data, epochs=2)
    train(recipe_from_dict(raw), show_progress=False, stop_after_steps=2)
    raw["train"]["threads"] = 2  # the machine's resources, not the computation: a preempted run moves machines
    result = train(recipe_from_dict(raw), show_progress=False, resume=True)
    assert result.summary["optimizer_steps"] > 2 and result.summary["threads"] == 2
    saved = yaml.safe_load((result.run.path / "recipe.yaml").read_text())
    assert saved["train"]["threads"] == 2  # the saved recipe says what the last part ran with


def test_mmap_threshold_is_set_on_glibc_unless_the_environment_sets_it(monkeypatch):
    import platform

    from slingshot.train import set_mmap_threshold

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert set_mmap_threshold(64 * 1024) == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert set_mmap_threshold(64 * 1024) is False


@pytest.mark.parametrize("method", ["full", "lora"])
def test_gradient_checkpointing_learns_like_the_plain_loop(tmp_path, tiny_bert, toy_data, method):
    plain = run(tmp_path / "plain", tiny_bert, toy_data, method=method, epochs=2)
    checkpointed = run(tmp_path / "checkpointed", tiny_bert, toy_data, method=method, epochs=2,
                       gradient_checkpointing=True)
    # recomputing activations changes no arithmetic: same seed, same batches, same weights
    assert checkpointed.metrics["eval"]["loss"] == pytest.approx(plain.metrics["eval"]["loss"], rel=1e-4)


def test_lora_classifier_trains_at_the_auto_learning_rate_and_records_it(tmp_path, tiny_bert, toy_data):
    result = run(tmp_path, tiny_bert, toy_data, method="lora", lr="auto", epochs=1, log_every=1)
    assert result.summary["learning_rate"] == 1e-3
    log = [json.loads(line) for line in result.run.train_log.read_text().splitlines()]
    rates = [line["lr"] for line in log if "lr" in line]
    assert rates and max(rates) <= 1e-3 and max(rates) > 5e-4  # no warm-up here: decays from 1e-3
    saved = recipe_from_dict(yaml.safe_load((result.run.path / "recipe.yaml").read_text()))
    assert saved.train.lr == "auto" and saved.learning_rate() == 1e-3


def test_lora_adapters_come_without_a_third_party_deprecation_warning(tiny_bert):
    import warnings

    from transformers import AutoModelForSequenceClassification

    from slingshot.tasks.classification import apply_lora

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2)
    before = model.num_parameters()
    recipe = recipe_from_dict({"model": {"name": str(tiny_bert)}, "data": {"train": "t.csv"},
                               "train": {"method": "lora"}})
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # peft asks for transformers' deprecated is_gradient_checkpointing
        adapted = apply_lora(model, recipe)
    assert any("lora_" in name for name, _ in adapted.named_parameters())
    # train.lr auto counts the model's parameters through the PEFT wrapper: the base's, plus the small adapters
    from slingshot.train import base_parameters

    assert before < base_parameters(adapted) == sum(p.numel() for p in adapted.parameters()) < 1.5 * before


def test_qlora_without_a_gpu_is_refused_before_the_run_directory_exists(tmp_path, tiny_bert, toy_data):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RecipeError, match="qlora needs a CUDA GPU"):
        run(tmp_path, tiny_bert, toy_data, method="qlora")
    assert not (tmp_path / "runs" / "toy").exists()


def test_layer_decay_gives_lower_layers_smaller_learning_rates(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    from slingshot.train import decay_groups, layer_depth

    assert layer_depth("bert.embeddings.word_embeddings.weight", 6) == 0
    assert layer_depth("bert.encoder.layer.0.attention.self.query.weight", 6) == 1
    assert layer_depth("transformer.h.11.mlp.c_fc.weight", 12) == 12
    assert layer_depth("model.layers.3.self_attn.q_proj.weight", 4) == 4
    assert layer_depth("classifier.weight", 6) == 7
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2)
    layers = model.config.num_hidden_layers
    groups = decay_groups(model, 0.01, 1e-3, layer_decay=0.5)
    by_name = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_name[id(named["classifier.weight"])]["lr"] == pytest.approx(1e-3)
    assert by_name[id(named["bert.encoder.layer.0.output.dense.weight"])]["lr"] == pytest.approx(1e-3 * 0.5**layers)
    assert by_name[id(named["bert.embeddings.word_embeddings.weight"])]["lr"] == pytest.approx(1e-3 * 0.5 ** (layers + 1))
    assert by_name[id(named["bert.embeddings.LayerNorm.weight"])]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(named)
    plain = decay_groups(model, 0.01, 1e-3)
    assert len(plain) == 2 and all(g["lr"] == 1e-3 for g in plain)


def test_layer_decay_and_weight_averaging_train_and_save_the_averaged_weights(tmp_path, tiny_bert, toy_data):
    # 12 epochs at lr 5e-3: at 8 epochs and 3e-3 the averaged toy model stayed at chance for 2-3 of seeds 42-49 with
    # either dropout sampler (seeds 42-47 all reach 1.0 here)
    result = run(tmp_path, tiny_bert, toy_data, epochs=12, lr=5e-3, layer_decay=0.8, ema=0.9)
    assert result.metrics["eval"]["accuracy"] >= 0.9
    # the saved model is the averaged one that was scored: evaluating it again gives the same accuracy
    best = max(e["accuracy"] for e in result.metrics["evaluations"])
    assert result.metrics["eval"]["accuracy"] == best


def test_resume_with_weight_averaging_matches_an_uninterrupted_run(tmp_path, tiny_bert, toy_data):
    fields = dict(epochs=3, eval_every=4, checkpoint_every=4, ema=0.8)
    straight = run(tmp_path / "a", tiny_bert, toy_data, **fields)
    raw = toy_recipe(tmp_path / "b", tiny_bert, toy_data, **fields)
    assert train(recipe_from_dict(raw), show_progress=False, stop_after_steps=10).interrupted
    resumed = train(recipe_from_dict(raw), show_progress=False, resume=True)
    a, b = weights(straight.run.model), weights(resumed.run.model)
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


def test_frozen_embeddings_stay_as_pretrained_while_the_rest_learns(tmp_path, tiny_bert, toy_data):
    result = run(tmp_path, tiny_bert, toy_data, epochs=2, freeze_embeddings=True)  # random embeddings: no accuracy
    before, after = weights(tiny_bert), weights(result.run.model)
    base = {key.removeprefix("bert."): value for key, value in before.items()}
    key = "bert.embeddings.word_embeddings.weight"
    torch.testing.assert_close(after[key], base[key.removeprefix("bert.")])
    layer = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(after[layer], base[layer.removeprefix("bert.")])


@pytest.mark.parametrize("ema", [None, 0.5])
def test_a_run_whose_last_evaluation_is_best_saves_and_reports_those_weights(tmp_path, tiny_bert, toy_data, ema):
    from slingshot.evaluate import evaluate_file, load_run

    # one epoch: the only evaluation is the last and the best, so the weights in memory are saved as they are
    result = run(tmp_path, tiny_bert, toy_data, epochs=1, precision="fp32", ema=ema)
    assert result.metrics["best_step"] == result.summary["optimizer_steps"]
    again, _, _ = evaluate_file(load_run(str(result.run.path)), str(toy_data["eval"]))
    # the loss tells the averaged weights from the raw ones, which accuracy might not
    assert again["loss"] == pytest.approx(result.metrics["eval"]["loss"], rel=1e-5)
    assert again["accuracy"] == result.metrics["eval"]["accuracy"]


def test_kernel_caches_are_capped_unless_the_user_set_them(monkeypatch):
    from slingshot.train import limit_kernel_caches

    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "256")
    limit_kernel_caches()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "16"
    assert os.environ["LRU_CACHE_CAPACITY"] == "256"  # the user's value wins


def test_classification_freezes_the_token_table_by_default_and_trains_with_eager_attention(tmp_path, tiny_bert,
                                                                                           toy_data):
    from transformers import AutoModelForSequenceClassification

    raw = toy_recipe(tmp_path, tiny_bert, toy_data, epochs=1)
    del raw["train"]["freeze_embeddings"]  # the default: auto
    result = train(recipe_from_dict(raw), show_progress=False)
    summary = result.summary
    assert summary["frozen_embeddings"] is True
    table = weights(tiny_bert)["embeddings.word_embeddings.weight"]
    assert summary["parameters"]["trainable"] == summary["parameters"]["total"] - table.numel()
    torch.testing.assert_close(weights(result.run.model)["bert.embeddings.word_embeddings.weight"], table)
    assert summary["attention"] == "eager"  # BERT drops attention weights in training: eager on a CPU
    saved = AutoModelForSequenceClassification.from_pretrained(str(result.run.model))
    assert saved.config._attn_implementation == "sdpa"  # the kernel choice is not written into the model


def test_auto_freezing_and_attention_choices():
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2ForSequenceClassification,
    )

    from slingshot.train import attention_in_use, attention_kernel, training_attention

    def recipe(task="classification", **train_fields):
        return recipe_from_dict({"task": task, "model": {"name": "m"}, "data": {"train": "t.csv"},
                                 "train": train_fields})

    assert recipe().freezes_embeddings()
    assert not recipe("regression").freezes_embeddings()
    assert not recipe("extractive_qa").freezes_embeddings()
    assert not recipe(method="lora").freezes_embeddings()
    assert not recipe(freeze_embeddings=False).freezes_embeddings()
    assert recipe("regression", freeze_embeddings=True).freezes_embeddings()
    assert recipe(method="lora").freezes_embeddings("full")  # what `plan` asks for the full column

    tiny = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
            "vocab_size": 50}
    bert = BertForSequenceClassification(BertConfig(**tiny))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert training_attention(recipe(), bert, cpu) == "eager"
    assert training_attention(recipe(), bert, cuda) is None  # GPU: SDPA's fused kernels take dropout
    assert training_attention(recipe(attention="sdpa"), bert, cpu) is None  # already sdpa
    no_dropout = BertForSequenceClassification(BertConfig(**tiny, attention_probs_dropout_prob=0.0))
    assert training_attention(recipe(), no_dropout, cpu) is None  # SDPA's fused CPU kernel keeps less
    gpt2 = GPT2ForSequenceClassification(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50))
    assert training_attention(recipe(), gpt2, cpu) == "eager"  # attn_pdrop 0.1
    assert training_attention(recipe(), torch.nn.Linear(2, 2), cpu) is None  # not a transformers model

    assert attention_in_use(bert) == "sdpa"
    with attention_kernel(bert, "eager"):
        assert attention_in_use(bert) == "eager"
        assert bert.bert.encoder.layer[0].attention.self.config._attn_implementation == "eager"
    assert attention_in_use(bert) == "sdpa"
    # the same outputs either way (eval mode: no dropout)
    bert.eval()
    ids = torch.randint(0, 50, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 4:] = 0
    with torch.no_grad():
        sdpa = bert(input_ids=ids, attention_mask=mask).logits
        with attention_kernel(bert, "eager"):
            eager = bert(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-4)


def test_best_weights_are_read_back_tensor_by_tensor_skipping_frozen_ones(tmp_path):
    from safetensors.torch import save_model
    from transformers import BertConfig, BertForSequenceClassification

    from slingshot.train import load_trained_weights

    config = BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                        vocab_size=50)
    model = BertForSequenceClassification(config)
    model.get_input_embeddings().weight.requires_grad_(False)
    save_model(model, str(tmp_path / "best.safetensors"))
    saved = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    load_trained_weights(model, tmp_path / "best.safetensors")
    state = model.state_dict()
    table = "bert.embeddings.word_embeddings.weight"
    for name, tensor in saved.items():
        if name != table:
            torch.testing.assert_close(state[name], tensor, msg=name)
    torch.testing.assert_close(state[table], saved[table] + 1.0)  # frozen: training never changes it, not read

    other = torch.nn.Linear(3, 3)
    save_model(other, str(tmp_path / "other.safetensors"))
    with pytest.raises(RunDirError, match="does not have"):
        load_trained_weights(model, tmp_path / "other.safetensors")


def test_weight_averaging_copies_integer_buffers_instead_of_truncating_them(tiny_bert):
    # PyTorch's EMA update truncates integer buffers: BERT's position ids sank towards 0 in the averaged model
    from torch.optim.swa_utils import AveragedModel
    from transformers import AutoModelForSequenceClassification

    from slingshot.train import ema_update

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert))
    averaged = AveragedModel(model, multi_avg_fn=ema_update(0.9), use_buffers=True)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        averaged.update_parameters(model)
    ids = dict(averaged.module.named_buffers())["bert.embeddings.position_ids"]
    assert torch.equal(ids, dict(model.named_buffers())["bert.embeddings.position_ids"])
    assert ids.flatten()[:8].tolist() == list(range(8))
    # floating-point weights are averaged: the first update copies (+1), then update n lerps towards the current
    # weights with decay min(0.9, (1 + n) / (10 + n)): 2/11 for n = 1 (towards +2), 3/12 for n = 2 (towards +3)
    name = "classifier.weight"
    got = dict(averaged.module.named_parameters())[name]
    second = 2 / 11 * 1 + 9 / 11 * 2
    assert torch.allclose(got, before[name] + (3 / 12 * second + 9 / 12 * 3), atol=1e-5)


def test_weight_averaging_warms_its_decay_up_and_then_holds_it():
    from slingshot.train import ema_update

    update = ema_update(0.9)
    kept, now = [torch.zeros(3)], [torch.ones(3)]
    shares = []  # the starting weights' share of the average, after each update
    for n in range(1, 200):
        update(kept, now, torch.tensor(n))
        shares.append(1 - float(kept[0][0]))
    decays = [min(0.9, (1 + n) / (10 + n)) for n in range(1, 200)]
    expected = torch.tensor(decays).cumprod(0)
    torch.testing.assert_close(torch.tensor(shares), expected, atol=1e-6, rtol=1e-5)
    assert decays[-1] == 0.9 and decays[0] < 0.2  # full decay once (1 + n) / (10 + n) passes it (n >= 80)


def test_a_small_training_set_trains_on_smaller_batches_then_makes_more_passes(tmp_path, tiny_bert, toy_data):
    def fit(name, min_steps):
        raw = toy_recipe(tmp_path, tiny_bert, toy_data, tokens_per_batch=1024, max_batch_size=64, min_steps=min_steps)
        return train(recipe_from_dict({**raw, "name": name}), show_progress=False).summary

    # 160 short texts fill 3 batches of 1,024 tokens (64 a batch): 9 steps in 3 epochs, too few to learn from
    full = fit("as-given", None)
    assert full["tokens_per_batch"] == 1024 and full["optimizer_steps"] == 9 and full["examples_seen"] == 3 * 160
    # halved to 128 tokens (about 11 texts a batch): 42 steps in the same 3 passes
    smaller = fit("smaller", 40)
    assert smaller["tokens_per_batch"] == 128 and smaller["optimizer_steps"] == 42
    assert smaller["examples_seen"] == 3 * 160
    # 64 tokens would leave fewer than 8 texts a step: more passes make up the rest
    longer = fit("longer", 60)
    assert longer["tokens_per_batch"] == 128 and longer["optimizer_steps"] == 60
    assert 4 * 160 < longer["examples_seen"] < 5 * 160


def test_evaluations_between_steps_take_batches_no_larger_than_the_training_ones(tmp_path, tiny_bert, toy_data,
                                                                                monkeypatch):
    import slingshot.train as train_module

    budgets = []
    forward_logits = train_module.forward_logits

    def recording(*args, **kwargs):
        budgets.append(kwargs["tokens_per_batch"])
        return forward_logits(*args, **kwargs)

    monkeypatch.setattr(train_module, "forward_logits", recording)
    result = run(tmp_path, tiny_bert, toy_data, epochs=2, eval_every=3, tokens_per_batch=128)
    evaluations = result.metrics["evaluations"]
    assert len(evaluations) >= 3
    # one forward pass per evaluation during training, at the training budget (not inference's 4,096 tokens)
    assert budgets[: len(evaluations)] == [128] * len(evaluations)


@pytest.mark.parametrize(("speedup", "expected"), [(0.58, False), (2.3, True)])
def test_bf16_is_chosen_on_a_cpu_only_where_its_matmuls_measure_faster(monkeypatch, speedup, expected):
    # the instructions alone mislead: an Intel Xeon reporting AVX512-BF16 ran bf16 matmuls at 0.58x fp32's rate
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(train_module, "bf16_matmul_speedup", lambda: speedup)
    train_module.cpu_has_fast_bf16.cache_clear()
    try:
        assert train_module.cpu_has_fast_bf16() is expected
        recipe = recipe_from_dict({"data": {"train": "x.csv"}})
        assert train_module.autocast_dtype(recipe, torch.device("cpu")) == (torch.bfloat16 if expected else None)
    finally:
        train_module.cpu_has_fast_bf16.cache_clear()


def test_measuring_bf16_leaves_the_seeded_random_stream_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    assert train_module.bf16_matmul_speedup(size=64, rounds=3) > 0
    torch.testing.assert_close(torch.rand(3), expected)


def test_measuring_bf16_caps_the_kernel_caches_before_its_first_matmul(monkeypatch):
    # `slingshot run` plans (and so measures) before training: its matmuls may be the process's first, and oneDNN
    # reads the caps once, at its first use (uncapped, the main job peaked at 1,476 instead of ~900 MB)
    for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        monkeypatch.delenv(name, raising=False)
    seen = []
    real_mm = torch.mm

    def recording(a, b):
        seen.append((os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"), os.environ.get("LRU_CACHE_CAPACITY")))
        return real_mm(a, b)

    monkeypatch.setattr(torch, "mm", recording)
    train_module.bf16_matmul_speedup(size=32, rounds=1)
    assert seen and set(seen) == {("16", "16")}


def test_resume_continues_in_the_precision_the_run_started_in(tmp_path, tiny_bert, toy_data, monkeypatch):
    # train.precision auto measures the machine; a run resumed where it decides otherwise keeps its first answer
    raw = toy_recipe(tmp_path, tiny_bert, toy_data, epochs=2, precision="auto")
    monkeypatch.setattr(train_module, "cpu_has_fast_bf16", lambda: True)
    stopped = train(recipe_from_dict(raw), show_progress=False, stop_after_steps=2)
    state = json.loads((stopped.run.path / "checkpoints" / "last" / "slingshot_state.json").read_text())
    assert state["precision"] == "bf16"
    monkeypatch.setattr(train_module, "cpu_has_fast_bf16", lambda: False)
    resumed = train(recipe_from_dict(raw), show_progress=False, resume=True)
    assert resumed.summary["precision"] == "bf16"
    fresh = train(recipe_from_dict(raw), show_progress=False, overwrite=True)
    assert fresh.summary["precision"] == "fp32"
