"""Explore page with AppTest on the tiny llama: the map with prompt markers and trajectories, search,
the neighbour table (exact against LSH), the vocabulary tree (the first tab) with search, exports and
Graphistry, prefix tuning.

The map is limited to the first 3,000 token ids with 20 layout epochs (WORKBENCH_MAP_TOKENS /
WORKBENCH_MAP_EPOCHS) and fitted once for the module, into the module's own model cache.
"""
import base64
import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.explore import prompts as explore

from core.train import training
from core.store.runs import new_run
from tests.conftest import REPO, tiny_config
from workbench import tree_view
from workbench.explore_view import PREFIX_MESSAGE

PAGE = str(REPO / "pages" / "explore.py")
MAP_TOKENS = 3000
COLOURS = ("red", "blue", "green", "black", "white", "brown", "pink", "grey", "gold", "teal", "navy", "lime")


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """run-a: prompt tuning with checkpoints at steps 1 and 2; run-b: prefix tuning."""
    root = tmp_path_factory.mktemp("explore")
    data = root / "toy.jsonl"
    data.write_text("".join(json.dumps({"input": f"Say {w}", "target": w}) + "\n" for w in COLOURS))
    with pytest.MonkeyPatch.context() as mp:
        for name, value in (("WORKBENCH_HOME", root / "ws"), ("WORKBENCH_MODEL_CACHE", root / "models"),
                            ("WORKBENCH_MAP_TOKENS", MAP_TOKENS), ("WORKBENCH_MAP_EPOCHS", 20)):
            mp.setenv(name, str(value))
        for name in {n for names in explore.GRAPHISTRY_FIELDS.values() for n in names}:
            mp.delenv(name, raising=False)
        runs = (new_run(tiny_config(tiny_model_dir, str(data), max_steps=2, save_every=1), run_id="run-a"),
                new_run(tiny_config(tiny_model_dir, str(data), max_steps=2, method="prefix-tuning"), run_id="run-b"))
        for run in runs:
            assert training.train(run)["state"] == "completed"
        yield mp, root


def page(runs, view: str | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["exp_runs"] = runs
    if view:
        at.session_state["exp_view"] = view
    return at.run()


def traces(at) -> dict[str, int]:
    """Trace name -> number of points of the first plotly chart (plotly sends arrays as base64)."""
    def count(x):
        return len(base64.b64decode(x["bdata"])) // np.dtype(x["dtype"]).itemsize if isinstance(x, dict) else len(x)
    return {t["name"]: count(t["x"]) for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]}


def test_no_runs_says_how_to_start(home):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception and "Tune page" in at.info[0].value


def test_map_prompts_trajectories_and_search(trained):
    at = page(["run-a"], "Map")
    assert not at.exception, at.exception
    shown = traces(at)
    assert shown == {f"vocabulary ({MAP_TOKENS:,} tokens)": MAP_TOKENS, "run-a": 4}
    assert at.multiselect(key="exp_checkpoints").options == ["run-a @ 1", "run-a @ 2"]
    at.multiselect(key="exp_checkpoints").set_value(["run-a @ 1", "run-a @ 2"]).run()
    at.text_input(key="exp_search").set_value("the").run()
    assert not at.exception, at.exception
    shown = traces(at)
    assert shown["run-a @ 1"] == shown["run-a"] == 4
    assert "run-a @ 2" not in shown  # the last checkpoint is the final adapter: drawn once
    assert shown["run-a trajectory"] == 4 * (2 + 1)  # 2 positions per virtual token, then a gap
    assert shown["search: the"] >= 1 and any("␣the" in c.value for c in at.caption)
    assert any("first 3,000 token ids" in c.value for c in at.caption)


def test_prefix_run_is_explained_not_drawn(trained):
    at = page(["run-b"], "Map")
    assert not at.exception
    assert any(PREFIX_MESSAGE in i.value for i in at.info)
    assert traces(at) == {f"vocabulary ({MAP_TOKENS:,} tokens)": MAP_TOKENS}


def test_neighbour_table_exact_lsh_and_recall(trained):
    at = page(["run-a", "run-b"])
    at.session_state["exp_view"] = "Neighbours"
    at.slider(key="exp_k").set_value(3).run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert len(table) == 4 and {"exact top-3", "LSH forest top-3", "LSH recall@3", "cosine to nearest"} <= set(
        table.columns)
    assert table["cosine to nearest"].between(-1, 1.0001).all()
    assert all(cell.count("✓") + cell.count("✗") == 3 for cell in table["LSH forest top-3"])  # exact agrees or not
    _, root = trained
    assert list((root / "models" / "vocab_maps").glob("*/lsh-*/meta.json"))  # the forest is cached beside the map
    recall = at.metric[0]
    assert "recall@3" in recall.label and recall.value.endswith("%") and 0 <= float(recall.value[:-1]) <= 100
    assert any("mean-centred" in c.value for c in at.caption)


def test_tree_is_the_first_view_with_prompts_search_exports_and_graphistry(trained, monkeypatch):
    at = page(["run-a"])
    assert not at.exception, at.exception
    assert at.tabs[0].label == "Tree"  # the first tab, open by default
    shown = traces(at)
    assert shown[f"vocabulary ({MAP_TOKENS:,} tokens)"] == MAP_TOKENS
    assert shown[f"tree ({MAP_TOKENS - 1:,} edges)"] == 3 * (MAP_TOKENS - 1)  # a spanning tree: V - 1 edges + gaps
    assert shown["run-a"] == 4 and shown["run-a → nearest"] == 3 * 4  # each virtual token hangs off a token
    assert any("spanning tree" in c.value and "tmap" in c.value for c in at.caption)
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Points (CSV)", "Edges (CSV)", "Points (Parquet)", "Edges (Parquet)"]
    assert any("GRAPHISTRY_SERVER" in i.value for i in at.info)

    at.text_input(key="exp_search").set_value("the").run()  # the sidebar's search marks the word on the tree
    assert not at.exception, at.exception
    assert traces(at)["search: the"] >= 1 and any("␣the" in c.value for c in at.caption)

    sent = {}

    def fake_upload(nodes, edges, settings, colors, name):
        sent.update(nodes=nodes, edges=edges, settings=settings)
        return "https://hub.example/graph/graph.html?dataset=x"

    _, root = trained
    monkeypatch.setattr(tree_view, "graphistry_upload", fake_upload)
    monkeypatch.setenv("GRAPHISTRY_SERVER", "hub.example")
    monkeypatch.setenv("GRAPHISTRY_USERNAME", "me")
    monkeypatch.setenv("GRAPHISTRY_PASSWORD", "pw-never-on-disk")
    at.run()
    at.button(key="exp_graphistry").click().run()
    assert not at.exception, at.exception
    assert any("hub.example/graph" in s.value for s in at.success)
    nodes, edges = sent["nodes"], sent["edges"]
    assert (nodes["kind"] == "prompt").sum() == 4 and (nodes["kind"] == "anchor").sum() == MAP_TOKENS
    assert (edges["kind"] == "tree").sum() == MAP_TOKENS - 1 and (edges["kind"] == "prompt").sum() == 4 * 3
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)["data"]
    drawn = next(t for t in spec if t["name"].startswith("vocabulary"))
    x = drawn["x"]
    x = np.frombuffer(base64.b64decode(x["bdata"]), x["dtype"]) if isinstance(x, dict) else np.asarray(x)
    np.testing.assert_allclose(nodes.loc[nodes["kind"] == "anchor", "x"], x, rtol=1e-6)  # the tree's positions
    csv = explore.table_bytes(nodes, "csv").decode()
    assert csv.startswith("id,label,kind,x,y,run,position,nearest,sim") and "run-a:v0" in csv
    written = [p for p in (root / "ws").rglob("*") if p.is_file() and b"pw-never-on-disk" in p.read_bytes()]
    assert written == []


def test_map_build_interrupted_by_a_rerun_leaves_tqdm_usable(monkeypatch):
    """A stop or rerun request (tab closed, a widget touched) surfaces in the progress callback, which
    umap calls from tqdm's write while tqdm holds its global lock: raised there, the lock stays held by
    a finished thread and every later map build in the app hangs on a blank page. The callback keeps
    the request; the fit finishes and is cached, then the request is raised."""
    import threading

    from tqdm import tqdm

    from workbench import explore_view

    class Interrupt(BaseException):  # like Streamlit's StopException / RerunException
        pass

    class Bar:
        calls = 0

        def progress(self, fraction, text=None):
            Bar.calls += 1
            if Bar.calls == 2:
                raise Interrupt()

        def empty(self):
            pass

    class Sink:  # what umap hands tqdm as its file
        def __init__(self, progress):
            self.progress = progress

        def write(self, s):
            self.progress(0.5, s)

        def flush(self):
            pass

    fits = []

    def fake_fit(cache_dir, anchors, progress=None, **params):
        for _ in tqdm(range(3), file=Sink(progress), mininterval=0):
            pass
        fits.append(1)
        return "the map"

    monkeypatch.setattr(explore_view.st, "progress", lambda *a, **k: Bar())
    monkeypatch.setattr(explore_view, "load_or_fit", fake_fit)
    monkeypatch.setattr(explore_view, "anchors", lambda spec: None)
    with pytest.raises(Interrupt):
        explore_view.vocab_map("interrupted-model")
    free = []

    def take_lock():  # from another thread: the interrupted one must not hold it any more
        taken = [(lk, lk.acquire(timeout=2)) for lk in tqdm.get_lock().locks]
        free.append(all(ok for _, ok in taken))
        for lk, ok in reversed(taken):
            if ok:
                lk.release()

    other = threading.Thread(target=take_lock)
    other.start()
    other.join()
    assert free == [True]
    assert explore_view.vocab_map("interrupted-model") == "the map" and fits == [1]  # kept, not fitted again


def test_tree_build_after_the_map_in_one_app_process(monkeypatch):
    """The tree takes its kNN from the map; both are built under the app's one build lock, which must not
    be taken twice (a blank page that never finishes)."""
    import threading
    from types import SimpleNamespace

    from workbench import explore_view

    knn = np.tile(np.arange(16), (20, 1))  # (V, 16): the map's 15-NN with self first
    vmap = SimpleNamespace(knn_indices_=knn, knn_sims_=np.ones((20, 16)), params_={"n_neighbors": 16})
    calls = []
    monkeypatch.setattr(explore_view.st, "progress", lambda *a, **k: SimpleNamespace(progress=print, empty=print))
    monkeypatch.setattr(explore_view, "load_or_fit", lambda *a, **k: vmap)
    monkeypatch.setattr(explore_view, "anchors", lambda spec: None)
    monkeypatch.setattr(tree_view, "anchors", lambda spec: None)
    monkeypatch.setattr(tree_view, "load_or_fit", lambda cache, anchors, progress, knn: calls.append(knn) or "tree")
    done = []
    worker = threading.Thread(target=lambda: done.append(tree_view.vocab_tree("lock-model")), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert done == ["tree"]
    assert calls[0][0].shape == (20, 15)  # the map's neighbours without the token itself
