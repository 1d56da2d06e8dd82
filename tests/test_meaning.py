"""What a prompt means (core/explore/meaning.py) on the tiny llama: the projected prompt, token
importance, the shorter prompt and prompt similarity between runs."""
import numpy as np
import pytest

from core.explore import meaning
from core.explore.neighbors import ExactCosine
from core.generate.generator import Generator, System
from core.generate.systems import run_system
from core.model.loading import embedding_matrix, load_model
from core.store.runs import new_run
from core.train import training
from tests.conftest import tiny_config

N = 6  # validation examples


@pytest.fixture
def trained(home, tiny_model_dir, toy_data):
    run = new_run(tiny_config(tiny_model_dir, toy_data, max_steps=2), run_id="pt")
    assert training.train(run)["state"] == "completed"
    lm = load_model(tiny_model_dir)
    emb = embedding_matrix(lm.model).numpy()
    return lm, emb, ExactCosine().fit(emb), Generator(lm.model, lm.tokenizer)


def test_a_prompt_made_of_tokens_projects_back_to_them(tiny_model_dir, tokenizer):
    emb = embedding_matrix(load_model(tiny_model_dir).model).numpy()
    ids = [1500, 42, 7000, 42, 31000]
    proj = meaning.project(emb[ids], ExactCosine().fit(emb), emb, tokenizer)
    assert proj.token_ids == ids
    assert proj.text == tokenizer.decode(ids)
    assert np.allclose(proj.cosines, 1.0, atol=1e-5) and proj.distance == pytest.approx(0.0, abs=1e-6)
    moved = meaning.project(emb[ids] * 1.5 + 0.01, ExactCosine().fit(emb), emb, tokenizer)
    assert moved.distance > 0.3  # a third of each vector's norm moved away at least


def test_projected_prompt_is_the_token_ids_where_the_virtual_tokens_go(trained):
    """A hard prompt of token ids scores exactly as a soft prompt made of those tokens' embeddings."""
    lm, emb, index, gen = trained
    base = run_system("pt")
    ids = (3000, 17, 4000, 9)
    rows = [(System("hard", base.template, base.prompt_format, prefix_ids=ids), "Say river", "river"),
            (System("soft", base.template, base.prompt_format, vectors=emb[list(ids)]), "Say river", "river"),
            (System("none", base.template, base.prompt_format), "Say river", "river")]
    hard, soft, bare = gen.log_likelihood(rows)
    assert hard == pytest.approx(soft, abs=1e-4) and hard != pytest.approx(bare, abs=1e-4)


def test_projection_scores_the_soft_and_the_projected_prompt(trained):
    lm, emb, index, gen = trained
    _, vectors = meaning.run_vectors("pt")
    proj = meaning.project(vectors, index, emb, lm.tokenizer)
    s = meaning.projection_scores(gen, "pt", proj, N)
    assert s["metric"] == "rougeL" and s["gap"] == pytest.approx(s["soft"] - s["projected"])
    soft_name, hard_name = s["names"]
    _, rows = meaning.validation_rows(meaning.Run.open("pt"), N)
    assert hard_name == "projected: pt" and len(s["outputs"][hard_name]) == len(rows) >= 2
    assert s["soft_loglik"] != pytest.approx(s["projected_loglik"])  # the prompt is not made of tokens


def test_importance_per_token_and_the_shorter_prompt(trained):
    lm, emb, index, gen = trained
    _, vectors = meaning.run_vectors("pt")
    vectors = vectors.copy()
    vectors[2] = index.mean_  # this token already is the mean: replacing it changes nothing
    imp = meaning.token_importance(gen, "pt", vectors, index.mean_, N, ("mean", "remove"), precision="fp32")
    assert imp["mean"].shape == imp["remove"].shape == (4,)
    assert imp["mean"][2] == pytest.approx(0.0, abs=1e-5)
    assert np.abs(np.delete(imp["mean"], 2)).max() > 1e-4  # the other tokens do change the likelihood
    full = meaning.shorter_prompt_loglik(gen, "pt", vectors, [0, 1, 2, 3], N)
    assert full == pytest.approx(imp["base"], abs=1e-5)
    keep = meaning.top_k_tokens(imp["remove"], 3)
    assert keep == sorted(keep) and len(keep) == 3 and int(np.argmin(imp["remove"])) not in keep
    # removing token j is the shorter prompt without j
    j = int(np.argmax(imp["remove"]))
    without = meaning.shorter_prompt_loglik(gen, "pt", vectors, [i for i in range(4) if i != j], N)
    assert imp["base"] - without == pytest.approx(imp["remove"][j], abs=1e-4)


def test_the_soft_prompt_in_memory_scores_as_its_adapter(trained):
    lm, emb, index, gen = trained
    _, vectors = meaning.run_vectors("pt")
    imp = meaning.token_importance(gen, "pt", vectors, index.mean_, N, precision="fp32")
    _, rows = meaning.validation_rows(meaning.Run.open("pt"), N)
    from_file = gen.log_likelihood([(run_system("pt"), x["input"], x["target"]) for x in rows])
    assert imp["base"] == pytest.approx(float(np.mean(from_file)), abs=1e-5)
    # the soft prompt's log-likelihood from the projection's scores serves as the importance base
    scores = meaning.projection_scores(gen, "pt", meaning.project(vectors, index, emb, lm.tokenizer), N)
    assert scores["soft_loglik"] == pytest.approx(imp["base"], abs=1e-5)
    reused = meaning.token_importance(gen, "pt", vectors, index.mean_, N, base=scores["soft_loglik"], precision="fp32")
    assert reused["mean"] == pytest.approx(imp["mean"], abs=1e-5)


def test_a_measured_importance_is_stored_and_read_back(trained, monkeypatch):
    """The same prompt on the same examples again (a page reload, another session): read back from the
    workspace, no pass through the model; another prompt or other examples: measured afresh."""
    lm, emb, index, gen = trained
    _, vectors = meaning.run_vectors("pt")
    first = meaning.token_importance(gen, "pt", vectors, index.mean_, N, precision="fp32")
    calls, real = [], gen.log_likelihood
    monkeypatch.setattr(gen, "log_likelihood", lambda rows: calls.append(len(rows)) or real(rows))
    again = meaning.token_importance(gen, "pt", vectors, index.mean_, N, precision="fp32")
    assert again["stored"] and "stored" not in first and calls == []
    assert np.array_equal(again["mean"], first["mean"]) and again["base"] == first["base"]
    other = vectors.copy()
    other[0] += 0.1
    assert not np.array_equal(meaning.token_importance(gen, "pt", other, index.mean_, N, precision="fp32")["mean"],
                              first["mean"])
    fewer = meaning.token_importance(gen, "pt", vectors, index.mean_, 1, precision="fp32")
    assert fewer["examples"] == 1 < first["examples"] and len(calls) == 2 and "stored" not in fewer
    short = meaning.shorter_prompt_loglik(gen, "pt", vectors, [0, 2], N)
    assert meaning.shorter_prompt_loglik(gen, "pt", vectors, [0, 2], N) == short and len(calls) == 3
    assert meaning.shorter_prompt_loglik(gen, "pt", vectors, [1, 2], N) != short and len(calls) == 4


def test_bf16_importance_ranks_the_tokens_as_float32_does(trained):
    """The default where the CPU has bf16: the same drops within bf16's error, from the float32 base."""
    if meaning.default_precision() != "bf16":
        pytest.skip("this CPU has no native bfloat16: the importance pass is float32 there")
    lm, emb, index, gen = trained
    _, vectors = meaning.run_vectors("pt")
    exact = meaning.token_importance(gen, "pt", vectors, index.mean_, N, precision="fp32")
    fast = meaning.token_importance(gen, "pt", vectors, index.mean_, N, base=exact["base"])
    alone = meaning.token_importance(gen, "pt", vectors, index.mean_, N)  # its base measured in bf16
    assert fast["precision"] == alone["precision"] == "bf16" and exact["precision"] == "fp32"
    assert fast["base"] == exact["base"] and alone["base"] != exact["base"]
    assert alone["base"] == pytest.approx(exact["base"], abs=0.002 * abs(exact["base"]))
    spread = np.abs(exact["mean"]).max()
    assert np.abs(fast["mean"] - exact["mean"]).max() < 0.1 * spread
    assert int(np.argmax(fast["mean"])) == int(np.argmax(exact["mean"]))
    with pytest.raises(ValueError, match="precision must be one of"):
        meaning.token_importance(gen, "pt", vectors, index.mean_, N, precision="fp16")


def test_prefix_tuning_has_no_projection(home, tiny_model_dir, toy_data):
    run = new_run(tiny_config(tiny_model_dir, toy_data, max_steps=1, method="prefix-tuning"), run_id="px")
    assert training.train(run)["state"] == "completed"
    with pytest.raises(meaning.WorkbenchError, match="Prefix tuning learns keys and values"):
        meaning.run_vectors("px")


def test_similarity_of_runs():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=8)
    a, b = rng.normal(size=(5, 8)), rng.normal(size=(3, 8))
    pooled, aligned = meaning.similarity_frames({"a": a, "b": b, "a reversed": a[::-1]}, mean)
    assert np.allclose(np.diag(pooled), 1) and np.allclose(np.diag(aligned), 1)
    assert np.allclose(pooled.values, pooled.values.T) and np.allclose(aligned.values, aligned.values.T)
    assert pooled.loc["a", "a reversed"] == pytest.approx(1) and aligned.loc["a", "a reversed"] == pytest.approx(1)
    assert aligned.loc["a", "b"] < 0.99 and abs(pooled.loc["a", "b"]) < 0.99
    # the alignment is the best one-to-one matching: at least as good as pairing tokens in order
    ca, cb = a - mean, b - mean
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    in_order = float(np.mean(np.sum(unit(ca[:3]) * unit(cb), axis=1)))
    assert aligned.loc["a", "b"] >= in_order - 1e-9
