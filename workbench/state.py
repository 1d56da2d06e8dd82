"""Cached resources shared by the pages (models are st.cache_resource, derived data st.cache_data)."""
from __future__ import annotations

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
    return ExactCosine().fit(embedding_matrix(base_model(spec).model).numpy())


@st.cache_resource(show_spinner=False)
def generator(spec: str):
    """One KV-cached generator per model; it keeps soft-prompt prefix caches between comparisons."""
    from core.generate.generator import Generator
    lm = base_model(spec)
    return Generator(lm.model, lm.tokenizer)


@st.cache_resource(show_spinner="Loading the sentence-embedding model…")
def sentence_embedder():
    from core.evaluate.similarity import SentenceEmbedder
    return SentenceEmbedder()
