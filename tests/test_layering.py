"""Imports flow one way: pages -> workbench -> core, and inside core from the top of the
architecture down (evaluate -> train -> generate -> model -> store). Enforced on the source."""
import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "core"
TOP = {"errors", "settings", "config", "tasks"}  # core's top-level modules: usable from every package
ALLOWED = {  # package -> the packages it may import (besides itself and the top-level modules)
    "store": set(),
    "model": {"store"},
    "generate": {"store", "model"},
    "train": {"store", "model", "generate"},
    "evaluate": {"store", "model", "generate", "train"},
    "explore": {"store", "model", "generate", "evaluate"},  # never train
    "top": {"store"},
}


def imported_modules(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            if node.module == "core":
                yield from (f"core.{a.name}" for a in node.names)


def room(path: Path) -> str:
    rel = path.relative_to(CORE).parts
    return rel[0] if len(rel) > 1 else "top"


def test_core_never_imports_streamlit_or_pages():
    files = list(CORE.rglob("*.py"))
    assert len(files) >= 8
    offenders = [(f.name, m) for f in files for m in imported_modules(f)
                 if m.split(".")[0] in ("streamlit", "pages", "workbench")]
    assert offenders == []


def test_core_is_grouped_in_packages_with_few_top_level_modules():
    top = {p.stem for p in CORE.glob("*.py")} - {"__init__"}
    assert top <= TOP, f"new core modules belong in a package: {sorted(top - TOP)}"
    assert set(ALLOWED) - {"top"} == {p.name for p in CORE.iterdir() if (p / "__init__.py").exists()}


def test_packages_import_downwards_only():
    offenders = []
    for f in CORE.rglob("*.py"):
        here = room(f)
        for m in imported_modules(f):
            parts = m.split(".")
            if parts[0] != "core" or len(parts) < 2 or parts[1] in TOP:
                continue
            if parts[1] != here and parts[1] not in ALLOWED[here]:
                offenders.append(f"{f.relative_to(CORE)} imports {m}")
    assert offenders == []
