import time

import pytest
from transformers import DistilBertConfig, DistilBertModel

from core.model.loading import embedding_matrix, load_model, resolve_model_dir
from core.errors import WorkbenchError


def test_bundled_model_loads_from_the_safetensors_cache_frozen():
    resolve_model_dir("smollm2-135m-instruct")  # converted once per machine
    t0 = time.perf_counter()
    lm = load_model("smollm2-135m-instruct")
    assert time.perf_counter() - t0 < 10  # generous bound; the benchmark reports the real figure
    assert type(lm.model).__name__ == "LlamaForCausalLM"
    assert not any(p.requires_grad for p in lm.model.parameters())
    assert not lm.model.training
    assert embedding_matrix(lm.model).shape == (49152, 576)
    assert lm.tokenizer.pad_token is not None and lm.tokenizer.chat_template


def test_local_tiny_folder_loads(tiny_model_dir):
    lm = load_model(tiny_model_dir)
    assert lm.model.config.hidden_size == 16 and lm.path.endswith(tiny_model_dir.rstrip("/").split("/")[-1])


@pytest.mark.parametrize("spec,needle", [
    ("/no/such/folder", "does not exist"),
    ("./relative/missing", "does not exist"),
])
def test_missing_folders_name_the_fix(spec, needle):
    with pytest.raises(WorkbenchError, match=needle):
        load_model(spec)


def test_folder_without_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(WorkbenchError, match="no config.json"):
        load_model(str(tmp_path))


def test_non_causal_model_is_refused(tmp_path):
    DistilBertModel(DistilBertConfig(dim=16, hidden_dim=32, n_layers=1, n_heads=2, vocab_size=100)).save_pretrained(tmp_path)
    with pytest.raises(WorkbenchError, match="not a causal language model"):
        load_model(str(tmp_path))


def test_weights_that_are_not_safetensors_are_refused(tiny_model_dir, tmp_path):
    import shutil
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WorkbenchError):
        load_model(str(folder))


def test_offline_hub_id_fails_fast_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(WorkbenchError, match="cannot be reached|not cached"):
        load_model("someone/some-model-that-is-not-cached")
    assert time.perf_counter() - t0 < 15
