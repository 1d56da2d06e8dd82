"""core/ is the library: it must never import streamlit (pages -> workbench -> core)."""
import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "core"


def imported_modules(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_core_never_imports_streamlit_or_pages():
    files = list(CORE.rglob("*.py"))
    assert len(files) >= 8
    offenders = [(f.name, m) for f in files for m in imported_modules(f)
                 if m.split(".")[0] in ("streamlit", "pages", "workbench")]
    assert offenders == []
