import importlib.util
import json
import shutil

import pytest
import torch
from conftest import toy_recipe

from slingshot.errors import RecipeError
from slingshot.pooling import append_mean_pooling_layer, sentence_transformers_pooling
from slingshot.recipe import recipe_from_dict
from slingshot.train import train


def classifier(folder, **kwargs):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=2, **kwargs)


def batch(folder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return tokenizer(["the film was great and the acting good", "awful"], padding=True, return_tensors="pt")


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_appended_layer_puts_the_layer_normed_masked_mean_at_the_first_token(tiny_bert, attention):
    model = classifier(tiny_bert, attn_implementation=attention).eval()
    inputs = batch(tiny_bert)
    assert inputs["attention_mask"][1].sum() < inputs["attention_mask"].shape[1]  # the second text is padded
    with torch.no_grad():
        hidden = model.base_model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        expected = torch.nn.functional.layer_norm((hidden * mask).sum(1) / mask.sum(1), hidden.shape[-1:])
        append_mean_pooling_layer(model)
        fast = model.base_model(**inputs).last_hidden_state[:, 0]
        del model.base_model.encoder.layer[-1].forward  # the layer as a saved model runs it: every position
        saved = model.base_model(**inputs).last_hidden_state[:, 0]
        unpadded = model.base_model(**{k: v[1:, :3] for k, v in inputs.items()}).last_hidden_state[:, 0]
    assert model.config.num_hidden_layers == 3
    # this process computes position 0 alone; the saved layer computes it among the rest: the same numbers
    torch.testing.assert_close(fast, saved, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(saved[1:], unpadded, atol=1e-5, rtol=1e-5)  # padding is left out of the mean
    # the first token's own vector enters the mean's LayerNorm at 1/1000 of its weight: 1e-3-sized differences
    torch.testing.assert_close(saved, expected, atol=2e-2, rtol=0)


def test_first_token_path_reads_every_mask_the_encoder_may_hand_its_layers():
    from slingshot.pooling import _real_tokens

    keep = torch.tensor([[True, True, False], [True, True, True]])
    additive = torch.where(keep, 0.0, torch.finfo(torch.float32).min)[:, None, None, :].expand(2, 1, 3, 3)
    for mask in (keep.long(), keep[:, None, None, :].expand(2, 1, 3, 3), additive):
        assert torch.equal(_real_tokens(mask, 2, 3), keep)
    assert _real_tokens(None, 2, 3).all()
    assert _real_tokens(torch.zeros(2, 1, 3, 3), 2, 3).all()  # eager attention without padding: all zeros


def test_pooling_layer_is_frozen_and_the_layers_below_still_learn(tiny_bert):
    model = append_mean_pooling_layer(classifier(tiny_bert).train())
    pooling = model.base_model.encoder.layer[-1]
    assert pooling.training and not any(p.requires_grad for p in pooling.parameters())
    model(**batch(tiny_bert), labels=torch.tensor([1, 0])).loss.backward()
    assert all(p.grad is None for p in pooling.parameters())
    assert torch.count_nonzero(model.base_model.encoder.layer[-2].attention.self.query.weight.grad) > 0
    assert model.classifier.weight.grad is not None


def test_mean_pooled_run_saves_a_standard_model_that_the_pipeline_runs_as_trained(tmp_path, tiny_bert, toy_data):
    from transformers import pipeline

    raw = toy_recipe(tmp_path, tiny_bert, toy_data, epochs=8)
    raw["model"]["pooling"] = "mean"
    result = train(recipe_from_dict(raw), show_progress=False)
    assert result.metrics["eval"]["accuracy"] >= 0.9
    assert result.summary["pooling"] == "mean"
    config = json.loads((result.run.model / "config.json").read_text())
    assert config["num_hidden_layers"] == 3 and config["slingshot_pooling"] == "mean"
    classify = pipeline("text-classification", model=str(result.run.model), device="cpu")
    predictions = [json.loads(line) for line in (result.run.path / "predictions.jsonl").read_text().splitlines()]
    outputs = classify([p["text"] for p in predictions[:8]])
    for output, saved in zip(outputs, predictions[:8], strict=True):
        assert output["label"] == saved["predicted"]
        assert output["score"] == pytest.approx(saved["probability"], abs=5e-3)  # the run scored under autocast
    if importlib.util.find_spec("onnxruntime") is not None:  # the onnx extra: the same graph exports as is
        from slingshot.onnx_export import export_onnx

        check = export_onnx(str(result.run.path))
        assert check["label_agreement"] == 1.0 and check["max_probability_difference"] < 1e-3


def test_resume_of_a_mean_pooled_run_reaches_the_same_weights(tmp_path, tiny_bert, toy_data):
    from safetensors.torch import load_file

    def recipe(folder):
        raw = toy_recipe(folder, tiny_bert, toy_data, epochs=2, eval_every=4, checkpoint_every=4)
        raw["model"]["pooling"] = "mean"
        return raw

    straight = train(recipe_from_dict(recipe(tmp_path / "a")), show_progress=False)
    stopped = train(recipe_from_dict(recipe(tmp_path / "b")), show_progress=False, stop_after_steps=6)
    assert stopped.interrupted
    resumed = train(recipe_from_dict(recipe(tmp_path / "b")), show_progress=False, resume=True)
    a = load_file(str(straight.run.model / "model.safetensors"))
    b = load_file(str(resumed.run.model / "model.safetensors"))
    assert a.keys() == b.keys() and any(".layer.2." in key for key in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


def test_auto_pools_the_mean_only_for_a_mean_pooled_sentence_transformers_folder(tmp_path, tiny_bert, toy_data):
    plain = train(recipe_from_dict({**toy_recipe(tmp_path / "plain", tiny_bert, toy_data, epochs=1),
                                    "model": {"name": str(tiny_bert), "max_length": 32, "pooling": "auto"}}),
                  show_progress=False)
    assert plain.summary["pooling"] == "cls"
    assert json.loads((plain.run.model / "config.json").read_text())["num_hidden_layers"] == 2

    folder = tmp_path / "st-model"
    shutil.copytree(tiny_bert, folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}))
    assert sentence_transformers_pooling(folder) == "mean" and sentence_transformers_pooling(tiny_bert) is None
    raw = toy_recipe(tmp_path / "st", folder, toy_data, epochs=1)
    raw["model"]["pooling"] = "auto"
    assert train(recipe_from_dict(raw), show_progress=False).summary["pooling"] == "mean"
    raw = toy_recipe(tmp_path / "st-lora", folder, toy_data, epochs=1, method="lora")
    raw["model"]["pooling"] = "auto"
    assert train(recipe_from_dict(raw), show_progress=False).summary["pooling"] == "cls"


def test_mean_pooling_is_refused_where_it_does_not_apply(tmp_path, tiny_bert, tiny_gpt2, toy_data):
    raw = toy_recipe(tmp_path, tiny_bert, toy_data, method="lora")
    raw["model"]["pooling"] = "mean"
    with pytest.raises(RecipeError, match="model.pooling mean is for classification and regression with method full"):
        recipe_from_dict(raw)
    raw = toy_recipe(tmp_path, tiny_gpt2, toy_data)
    raw["model"]["pooling"] = "mean"
    with pytest.raises(RecipeError, match="BERT-style encoder"):
        train(recipe_from_dict(raw), show_progress=False)
    assert not (tmp_path / "runs" / "toy" / "summary.json").exists()
