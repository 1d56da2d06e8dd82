"""Streamlit entry point: `streamlit run workbench/app.py`.

`streamlit run` puts only this file's folder on sys.path, so the repo root is added first;
pages are registered with absolute paths through st.navigation.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from workbench.state import ensure_bundled_model  # noqa: E402

PAGES = [
    ("home.py", "Home", ":material/home:"),
    ("tune.py", "Tune", ":material/model_training:"),
    ("sweep.py", "Sweep", ":material/grid_view:"),
    ("runs.py", "Runs", ":material/table_view:"),
    ("compare.py", "Compare", ":material/compare:"),
    ("explore.py", "Explore", ":material/scatter_plot:"),
    ("results.py", "Results", ":material/leaderboard:"),
]

st.set_page_config(page_title="Soft Prompt Workbench", page_icon=":material/tune:", layout="wide")
ensure_bundled_model()  # a fresh clone converts the model once: a progress bar meanwhile, not a blank page
nav = st.navigation([st.Page(str(ROOT / "pages" / f), title=t, icon=i) for f, t, i in PAGES])
nav.run()
