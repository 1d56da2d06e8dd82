"""Where the workbench keeps things, and run ids that can never leave the workspace."""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from core.errors import WorkbenchError

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def workspace() -> Path:
    """The workspace root: $WORKBENCH_HOME, default ./workspace (created on demand)."""
    home = Path(os.environ.get("WORKBENCH_HOME", "workspace")).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def workspace_dir(name: str) -> Path:
    """A folder of the workspace (runs, comparisons, importance, ...), created on demand."""
    d = workspace() / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def runs_dir() -> Path:
    return workspace_dir("runs")


def model_cache_dir() -> Path:
    """Converted model weights: $WORKBENCH_MODEL_CACHE, default <workspace>/models."""
    env = os.environ.get("WORKBENCH_MODEL_CACHE")
    d = Path(env).expanduser().resolve() if env else workspace() / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


def check_run_id(run_id: str) -> str:
    """Return run_id if it is a plain folder name; raise WorkbenchError otherwise."""
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id) or ".." in run_id:
        raise WorkbenchError(
            f"Run id {run_id!r} is not valid: use 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no '/' and no '..')."
        )
    return run_id


def child_path(root: Path, item_id: str, what: str = "Run") -> Path:
    """The folder `item_id` of `root`, guaranteed to sit directly inside it."""
    path = (root / check_run_id(item_id)).resolve()
    if path.parent != root:
        raise WorkbenchError(f"{what} id {item_id!r} points outside the workspace {root}.")
    return path


def run_path(run_id: str) -> Path:
    """The folder of a run, guaranteed to sit directly inside the runs folder."""
    return child_path(runs_dir(), run_id)


@dataclass
class IdFolder:
    """A workspace folder named by an id (a run, a sweep) that holds `MARKER` and a status.json."""
    id: str
    path: Path
    MARKER: ClassVar[str] = ""
    MISSING: ClassVar[str] = "{id!r} does not exist."

    @classmethod
    def locate(cls, item_id: str) -> Path:
        raise NotImplementedError

    @classmethod
    def open(cls, item_id: str):
        path = cls.locate(item_id)
        if not (path / cls.MARKER).exists():
            raise WorkbenchError(cls.MISSING.format(id=item_id))
        return cls(item_id, path)

    def set_status(self, **fields) -> dict:
        status = read_json(self.path / "status.json", default={}) or {}
        status.update(fields, updated=time.time())
        write_json_atomic(self.path / "status.json", status)
        return status


def safe_filename(name: str) -> str:
    """An uploaded file name reduced to a plain base name that stays inside its folder."""
    base = os.path.basename(str(name).replace("\\", "/"))
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")
    return base[:100] or "upload"


def write_json_atomic(path: Path, data) -> None:
    """Write JSON to a temp file in the same folder, fsync, then rename over the target."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path: Path, default=None):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def read_jsonl(path: Path) -> list:
    """The rows of a JSON-lines file (none when it does not exist); a line cut by a crash mid-write is skipped."""
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        pass
    return rows


def append_jsonl(path: Path, row) -> None:
    """One row at the end of a JSON-lines file, in one write (rows of several processes do not interleave)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
