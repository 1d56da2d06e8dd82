"""Widgets generated from TuneConfig: one widget per field, its help text, its default,
and the validation message right under the field at fault."""
from __future__ import annotations

import dataclasses

import streamlit as st

from core.config import ConfigError, TuneConfig, _ENUMS

FIELDS = {f.name: f for f in dataclasses.fields(TuneConfig)}
DEFAULTS = TuneConfig()
ERRORS_KEY = "tune_form_errors"


def key(name: str) -> str:
    return f"cfg_{name}"


def field_widget(name: str, container=st, label: str | None = None):
    """Render the widget for one config field and return its raw value."""
    f, default = FIELDS[name], getattr(DEFAULTS, name)
    label = label or name.replace("_", " ").capitalize()
    help_ = f.metadata.get("help")
    if name in _ENUMS:
        options = [e.value for e in _ENUMS[name]]
        value = container.selectbox(label, options, index=options.index(default.value), help=help_, key=key(name))
    elif isinstance(default, bool):
        value = container.checkbox(label, value=default, help=help_, key=key(name))
    elif isinstance(default, int):
        value = int(container.number_input(label, value=default, step=1, help=help_, key=key(name)))
    elif isinstance(default, float):  # text, so that any typed value reaches validation
        raw = container.text_input(label, value=f"{default:g}", help=help_, key=key(name))
        value = _float(raw)
    elif isinstance(default, list):
        raw = container.text_input(label, value=", ".join(default), help=help_ + " (comma-separated)", key=key(name))
        value = [w.strip() for w in raw.split(",") if w.strip()]
    else:
        value = container.text_input(label, value=default or "", help=help_, key=key(name)) or None
        value = value if value is not None or f.default is None else ""
    err = st.session_state.get(ERRORS_KEY, {}).get(name)
    if err:
        container.error(f"{label}: {err}", icon=":material/error:")
    return value


def _float(raw: str):
    try:
        return float(raw.strip())
    except ValueError:
        return raw.strip()  # left as text: validation names it


def build_config(values: dict) -> TuneConfig | None:
    """Validate; on failure keep every field's message for the next render and return None."""
    try:
        cfg = TuneConfig(**values)
    except ConfigError as e:
        st.session_state[ERRORS_KEY] = e.errors
        return None
    st.session_state[ERRORS_KEY] = {}
    return cfg

