"""Links between pages that work in the app and in page tests alike."""
from __future__ import annotations

from pathlib import Path

import streamlit as st
from streamlit.errors import StreamlitPageNotFoundError

PAGES_DIR = Path(__file__).resolve().parent.parent / "pages"


def page_link(page: str, label: str, icon: str | None = None, container=st) -> None:
    """A link to pages/<page>.py. A page run on its own (AppTest) has no navigation to link into,
    so it shows the label as plain text there instead of failing."""
    try:
        container.page_link(str(PAGES_DIR / f"{page}.py"), label=label, icon=icon)
    except StreamlitPageNotFoundError:
        container.markdown(f"{label} (the {page.capitalize()} page)")
