"""core.explore.prompts: prompt sources, map settings and cache folder, labels and search, the neighbour
table, export bytes, Graphistry settings and upload (with a fake client)."""
import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import save_file

from core.explore.prompts import (graphistry_plotter, graphistry_settings, graphistry_upload, load_prompt, map_cache_dir,
                          map_settings, neighbour_table, prompt_sources, run_prompts, search_tokens, table_bytes,
                          token_labels)
from core.explore.neighbors import ExactCosine
from core.explore.lshforest import LSHForestIndex
from core.errors import WorkbenchError
from core.store.runs import Run
from tests.test_vocabgraph import ANCHORS, LABELS
from workbench.explore_view import GRAPHISTRY_HELP

RNG = np.random.default_rng(3)


def adapter(folder, peft_type="PROMPT_TUNING", width=12, n=4):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": peft_type, "num_virtual_tokens": n}))
    save_file({"prompt_embeddings": RNG.standard_normal((n, width)).astype(np.float32)},
              str(folder / "adapter_model.safetensors"))
    (folder / "trainer_state.json").write_text("{}")


def test_sources_are_checkpoints_then_final_adapter(tmp_path):
    run = Run("r1", tmp_path / "r1")
    for step in (2, 10, 4):
        adapter(run.checkpoints_dir / f"checkpoint-{step}")
    adapter(run.adapter_dir)
    sources = prompt_sources(run, [10, 2])
    assert [s.label for s in sources] == ["r1 @ 2", "r1 @ 10", "r1"] and [s.step for s in sources] == [2, 10, None]
    peft_type, vectors = load_prompt(sources[-1])
    assert peft_type == "PROMPT_TUNING" and vectors.shape == (4, 12)
    shutil.copytree(run.adapter_dir, run.checkpoints_dir / "checkpoint-12")  # the last save is the final adapter
    peft_type, prompts = run_prompts(run, [2, 12])
    assert peft_type == "PROMPT_TUNING" and [s.label for s, _ in prompts] == ["r1 @ 2", "r1"]
    prefix = Run("r2", tmp_path / "r2")
    adapter(prefix.adapter_dir, "PREFIX_TUNING", width=64)
    assert load_prompt(prompt_sources(prefix)[0]) == ("PREFIX_TUNING", None)
    assert run_prompts(prefix) == ("PREFIX_TUNING", [])
    assert prompt_sources(Run("r3", tmp_path / "r3")) == []


def test_map_settings_from_environment():
    assert map_settings({}) == (None, {"n_epochs": None})
    assert map_settings({"WORKBENCH_MAP_TOKENS": "3000", "WORKBENCH_MAP_EPOCHS": "20"}) == (3000, {"n_epochs": 20})
    for bad in ({"WORKBENCH_MAP_TOKENS": "lots"}, {"WORKBENCH_MAP_TOKENS": "5"}, {"WORKBENCH_MAP_EPOCHS": "0"}):
        with pytest.raises(WorkbenchError, match=next(iter(bad))):
            map_settings(bad)


def test_map_cache_folder_per_model(home, tmp_path):
    bundled = map_cache_dir("smollm2-135m-instruct")
    assert bundled.parent.name == "vocab_maps" and bundled.name == "smollm2-135m-instruct"
    a, b = tmp_path / "x" / "model", tmp_path / "y" / "model"
    a.mkdir(parents=True), b.mkdir(parents=True)
    assert map_cache_dir(str(a)) != map_cache_dir(str(b)) and map_cache_dir(str(a)).name.startswith("model-")
    assert map_cache_dir("org/name").name.startswith("name-")
    assert map_cache_dir("smollm2-135m-instruct", 3000).name == "smollm2-135m-instruct-first3000"
    tree = map_cache_dir("smollm2-135m-instruct", 3000, "vocab_trees")  # the tree's cache: same key, own folder
    assert tree.name == "smollm2-135m-instruct-first3000" and tree.parent.name == "vocab_trees"


def test_labels_show_spaces_and_search_finds_a_word(tokenizer):
    labels = token_labels(tokenizer, len(tokenizer) + 2)
    assert len(labels) == len(tokenizer) + 2 and labels[-1] == f"<id {len(tokenizer) + 1}>"
    the = tokenizer.encode(" the", add_special_tokens=False)[0]
    assert labels[the] == "␣the"
    found = search_tokens("the", tokenizer, labels)
    assert the in found and all(0 <= i < len(labels) for i in found)
    assert len(search_tokens("  ", tokenizer, labels)) == 0


def test_neighbour_table_exact_against_forest():
    exact = ExactCosine().fit(ANCHORS)
    forest = LSHForestIndex(trees=2, branching=4, depth=2, graph_k=4, ef=8).fit(ANCHORS)
    prompts = [("run-a", ANCHORS[[5, 17]] + 0.01), ("run-b", RNG.standard_normal((3, 12)).astype(np.float32))]
    table, recall = neighbour_table(prompts, exact, forest, LABELS, k=4, candidates=8, token_norm=2.0)
    assert list(table["prompt"]) == ["run-a"] * 2 + ["run-b"] * 3 and list(table["virtual token"]) == [0, 1, 0, 1, 2]
    assert {"exact top-4", "LSH forest top-4", "LSH recall@4", "distance to nearest (1 - cos)"} <= set(table.columns)
    assert list(table["nearest token"][:2]) == ["tok5", "tok17"]  # a tiny nudge keeps its own token first
    assert np.allclose(table["distance to nearest (1 - cos)"], 1 - table["cosine to nearest"])
    assert 0 <= recall <= 1 and np.isclose(recall, table["LSH recall@4"].mean())
    full, recall_all = neighbour_table(prompts, exact, forest, LABELS, k=4, candidates=len(ANCHORS))
    assert recall_all == 1.0 and (full["exact agrees"] == "yes").all()  # all candidates
    assert [t.replace(" ✓", "") for t in full["LSH forest top-4"]] == list(full["exact top-4"])
    marks = " ".join(table["LSH forest top-4"])
    assert marks.count("✓") == round(table["LSH recall@4"].sum() * 4)  # one mark per answer exact search agrees with


def test_export_bytes_round_trip():
    frame = pd.DataFrame({"id": [0, 1], "label": ["␣the", "a,b"], "x": [0.5, -1.0]})
    assert pd.read_csv(io.BytesIO(table_bytes(frame, "csv"))).equals(frame)
    assert pd.read_parquet(io.BytesIO(table_bytes(frame, "parquet"))).equals(frame)
    with pytest.raises(ValueError, match="json"):
        table_bytes(frame, "json")


def test_graphistry_settings_need_a_server_and_a_credential():
    assert graphistry_settings({}, {}) is None
    assert graphistry_settings({"GRAPHISTRY_SERVER": "hub.example"}, {}) is None  # no credential
    assert graphistry_settings({"GRAPHISTRY_USERNAME": "u", "GRAPHISTRY_PASSWORD": "p"}, {}) is None  # no server
    env = {"GRAPHISTRY_SERVER": "hub.example", "GRAPHISTRY_USERNAME": "u", "GRAPHISTRY_PASSWORD": "p"}
    assert graphistry_settings(env, {"server": "other"}) == {"server": "hub.example", "username": "u", "password": "p"}
    secrets = {"server": "s.example", "personal_key_id": "id", "personal_key_secret": "sec", "protocol": "http"}
    assert graphistry_settings({}, secrets) == secrets
    assert graphistry_settings({"GRAPHISTRY_HOSTNAME": "h", "GRAPHISTRY_API_TOKEN": "t"}, {}) == {"server": "h",
                                                                                                "token": "t"}


class FakeClient:
    """Records every call of the graphistry client chain; plot() returns a URL or raises."""

    def __init__(self, fail: str = ""):
        self.calls, self.fail = [], fail

    def __getattr__(self, name):
        def method(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            if name == "plot" and self.fail:
                raise RuntimeError(self.fail)
            return "https://hub.example/graph/graph.html?dataset=abc" if name == "plot" else self
        return method


def test_graphistry_upload_registers_binds_and_returns_the_url(monkeypatch):
    import graphistry
    fake = FakeClient()
    monkeypatch.setattr(graphistry, "client", lambda: fake)
    nodes = pd.DataFrame({"id": [0, 1], "label": ["a", "b"], "x": [0.0, 1.0], "y": [0.0, 1.0], "run": ["", "r"]})
    edges = pd.DataFrame({"src": [1], "dst": [0], "weight": [0.2], "run": ["r"]})
    settings = {"server": "hub.example", "username": "u", "password": "s3cret"}
    url = graphistry_upload(nodes, edges, settings, {"r": "#4F46E5"}, "test")
    assert url.startswith("https://hub.example/")
    calls = {name: kw for name, _, kw in fake.calls}
    assert calls["register"] == {"api": 3, "server": "hub.example", "protocol": "https", "username": "u",
                                 "password": "s3cret"}
    assert calls["bind"]["point_x"] == "x" and calls["plot"]["render"] is False
    monkeypatch.setattr(graphistry, "client", lambda: FakeClient(fail="401 for user u with password s3cret"))
    with pytest.raises(WorkbenchError) as err:
        graphistry_upload(nodes, edges, settings, {}, "test")
    assert "s3cret" not in str(err.value) and "***" in str(err.value)


def test_graphistry_plotter_binds_with_the_real_api():
    import graphistry
    nodes = pd.DataFrame({"id": [0, 1], "label": ["a", "b"], "x": [0.0, 1.0], "y": [0.0, 1.0], "run": ["", "r"]})
    edges = pd.DataFrame({"src": [1], "dst": [0], "weight": [0.2], "run": ["r"]})
    g = graphistry_plotter(graphistry.client(), nodes, edges, {"r": "#4F46E5"})  # no server contacted
    assert (g._node, g._source, g._destination, g._point_x, g._point_y) == ("id", "src", "dst", "x", "y")
    assert GRAPHISTRY_HELP.count("GRAPHISTRY_SERVER") == 1
