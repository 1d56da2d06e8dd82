"""Cached resources shared by the pages (models are st.cache_resource, derived data st.cache_data)."""
from __future__ import annotations

import streamlit as st

from core.runs import list_runs
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
