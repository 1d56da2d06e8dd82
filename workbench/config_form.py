"""Widgets generated from TuneConfig: one widget per field, its help text, its default,
and the validation message right under the field at fault."""
from __future__ import annotations

import dataclasses
import functools

import streamlit as st

from core.config import ConfigError, TuneConfig, _ENUMS
from core.tasks import TASK_DEFAULTS
from workbench.keep import keep_widgets

FIELDS = {f.name: f for f in dataclasses.fields(TuneConfig)}
DEFAULTS = TuneConfig()
TASK_FIELDS = sorted({name for values in TASK_DEFAULTS.values() for name in values}
                     | {"method", "num_virtual_tokens", "init", "learning_rate", "max_steps", "batch_size"})
ERRORS_KEY = "tune_form_errors"
OWN_WIDGETS = {"model", "task", "data_path", "input_column", "target_column"}  # drawn by the page itself
TUNE_KEYS = ["model_source", "model_folder", "data_kind", "cfg_task", "cfg_task_name", "cfg_input_column",
             "cfg_target_column"]  # the Tune page's own input widgets


def key(name: str, form: str = "cfg") -> str:
    """A field's widget key. Each page's form has its own prefix ("cfg" is the Tune page's): the
    fields a task change sets but a page does not draw (init, label words on the Sweep page) would
    otherwise land in another page's form, under that page's own task."""
    return f"{form}_{name}"


def keep_form_state() -> None:
    """Call first on every run of the Tune page: its fields and choices keep their values when another
    page is shown, the page stops to ask for an upload, or another method hides some of its fields
    (workbench/keep.py)."""
    keep_widgets([key(name) for name in FIELDS if name not in OWN_WIDGETS] + TUNE_KEYS)


def widget_value(name: str, value):
    """A config value as its widget holds it."""
    if name in _ENUMS:
        return getattr(value, "value", value)
    if isinstance(getattr(DEFAULTS, name), float):
        return f"{value:g}" if isinstance(value, (int, float)) else str(value)
    if isinstance(value, list):
        return ", ".join(value)
    return "" if value is None else value


@functools.lru_cache(maxsize=None)
def start_config(task: str | None) -> TuneConfig:
    """The config a form starts from: the task's tuned defaults, or the general ones (read only)."""
    return TuneConfig.for_task(task=task) if task else DEFAULTS


def apply_defaults(task: str | None, form: str = "cfg") -> None:
    """Set the form to a task's tuned defaults (general defaults for own data): on a task change."""
    cfg = start_config(task)
    for name in TASK_FIELDS:
        st.session_state[key(name, form)] = widget_value(name, getattr(cfg, name))


MULTILINE = {"input_template"}  # text fields drawn as a text area


def field_widget(name: str, container=st, label: str | None = None, task: str | None = None, form: str = "cfg",
                 options: list | None = None):
    """Render the widget for one config field and return its raw value. A field starts at the
    task's tuned default (general default without a task) and keeps what the user sets. Messages
    under the fields are the Tune form's (ERRORS_KEY); other forms report their own. `options`
    limits a choice field (an enum, or a text field drawn as a select box) to those values."""
    f = FIELDS[name]
    k = key(name, form)
    label = label or name.replace("_", " ").capitalize()
    help_ = f.metadata.get("help")
    if k not in st.session_state:
        st.session_state[k] = widget_value(name, getattr(start_config(task), name))
    default = getattr(DEFAULTS, name)
    if options is not None:
        if st.session_state[k] not in options:  # a choice no longer offered: back to the first one
            st.session_state[k] = options[0]
        value = container.selectbox(label, options, help=help_, key=k)
    elif name in _ENUMS:
        value = container.selectbox(label, [e.value for e in _ENUMS[name]], help=help_, key=k)
    elif isinstance(default, bool):
        value = container.checkbox(label, help=help_, key=k)
    elif isinstance(default, int):
        value = int(container.number_input(label, step=1, help=help_, key=k))
    elif isinstance(default, float):  # text, so that any typed value reaches validation
        value = _float(container.text_input(label, help=help_, key=k))
    elif isinstance(default, list):
        raw = container.text_input(label, help=help_ + " (comma-separated)", key=k)
        value = [w.strip() for w in raw.split(",") if w.strip()]
    else:  # a template may span lines ("{input}\nSentiment:"), which a one-line input would drop
        widget = container.text_area if name in MULTILINE else container.text_input
        value = widget(label, help=help_, key=k, **({"height": 68} if name in MULTILINE else {})) or None
        value = value if value is not None or f.default is None else ""
    err = st.session_state.get(ERRORS_KEY, {}).get(name) if form == "cfg" else None
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

