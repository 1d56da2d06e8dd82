"""Explore: learned prompt tokens among a model's vocabulary embeddings (the data behind the page).

Prompt sources (a run's final adapter and its checkpoints), where a model's fixed map is
cached, token labels and search, the neighbour table (exact cosine against the LSH forest,
with recall@k), in-memory CSV / Parquet export of the vocabulary tree's tables, and the
Graphistry upload. The page's figures are drawn in `workbench.explore_view`.

Two environment variables shrink the map for tests and very large vocabularies:
    WORKBENCH_MAP_TOKENS  map only the first N token ids (default: the whole vocabulary)
    WORKBENCH_MAP_EPOCHS  UMAP layout epochs (default: UMAP's own choice, 200 for a vocabulary)
"""
from __future__ import annotations

import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.explore.neighbors import ExactCosine, recall_at_k
from core.errors import WorkbenchError
from core.store.paths import model_cache_dir
from core.model.adapters import adapter_prompt
from core.store.runs import Run

GRAPHISTRY_FIELDS = {  # settings key -> environment variables, first found wins
    "server": ("GRAPHISTRY_SERVER", "GRAPHISTRY_HOSTNAME"), "protocol": ("GRAPHISTRY_PROTOCOL",),
    "username": ("GRAPHISTRY_USERNAME",), "password": ("GRAPHISTRY_PASSWORD",),
    "personal_key_id": ("GRAPHISTRY_PERSONAL_KEY_ID",), "personal_key_secret": ("GRAPHISTRY_PERSONAL_KEY_SECRET",),
    "token": ("GRAPHISTRY_API_TOKEN",),
}
GRAPHISTRY_AUTH = (("username", "password"), ("personal_key_id", "personal_key_secret"), ("token",))



@dataclass(frozen=True)
class PromptSource:
    """One saved prompt: a run's final adapter (step None) or one of its checkpoints."""
    run_id: str
    label: str
    adapter_dir: str
    step: int | None = None


def prompt_sources(run: Run, steps: list[int] | tuple = ()) -> list[PromptSource]:
    """The run's checkpoints at steps (oldest first), then its final adapter if it has one."""
    out = [PromptSource(run.id, f"{run.id} @ {step}", str(p), step) for step, p in run.checkpoints() if step in set(steps)]
    if (run.adapter_dir / "adapter_model.safetensors").exists():
        out.append(PromptSource(run.id, run.id, str(run.adapter_dir)))
    return out


def prompt_runs(summaries: list[dict]) -> list[dict]:
    """The runs (list_runs rows) that hold a saved prompt: a final adapter or a checkpoint."""
    out = []
    for r in summaries:
        run = Run.open(r["id"])
        if r.get("model") and ((run.adapter_dir / "adapter_model.safetensors").exists() or run.checkpoints()):
            out.append(r)
    return out


def load_prompt(source: PromptSource) -> tuple[str, np.ndarray | None]:
    """(PEFT type, input-space vectors (P, D)); vectors is None for prefix tuning."""
    peft_type, vectors = adapter_prompt(source.adapter_dir)
    return peft_type, (None if peft_type == "PREFIX_TUNING" else vectors)


def run_prompts(run: Run, steps=()) -> tuple[str, list[tuple[PromptSource, np.ndarray]]]:
    """(PEFT type, [(source, vectors (P, D))]) of a run's picked checkpoints and final adapter.

    Prefix tuning gives no vectors (an empty list). A checkpoint equal to the final adapter (the last
    save of a run usually is) is left out: the final adapter stands for it.
    """
    peft_type, out = "", []
    for source in prompt_sources(run, steps):
        peft_type, vectors = load_prompt(source)
        if vectors is None:
            return peft_type, []
        out.append((source, vectors))
    if out and out[-1][0].step is None:
        final = out[-1][1]
        out = [(s, v) for s, v in out[:-1] if not np.array_equal(v, final)] + out[-1:]
    return peft_type, out


def map_settings(env=None) -> tuple[int | None, dict]:
    """(token limit or None, VocabMap parameters) from WORKBENCH_MAP_TOKENS / WORKBENCH_MAP_EPOCHS."""
    env = os.environ if env is None else env
    values = {}
    for name in ("WORKBENCH_MAP_TOKENS", "WORKBENCH_MAP_EPOCHS"):
        raw = (env.get(name) or "").strip()
        if raw and (not raw.isdigit() or int(raw) < (10 if name.endswith("TOKENS") else 1)):
            raise WorkbenchError(f"{name} must be a whole number ({'>= 10' if name.endswith('TOKENS') else '>= 1'}), "
                                 f"got {raw!r}; unset it to use the default.")
        values[name] = int(raw) if raw else None
    return values["WORKBENCH_MAP_TOKENS"], {"n_epochs": values["WORKBENCH_MAP_EPOCHS"]}


def map_cache_dir(spec: str, limit: int | None = None, kind: str = "vocab_maps") -> Path:
    """<model cache>/<kind>/<model name>[-<path hash>][-first<N>]: the map's (kind "vocab_trees": the tree's)
    disk cache."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(spec.rstrip("/")).name or "model")[:80]
    local = spec.startswith((".", "/", "~")) or Path(spec).expanduser().exists()
    if local or "/" in spec:  # two folders (or hub ids) with one base name must not share a cache
        name += "-" + hashlib.blake2b(str(Path(spec).expanduser().resolve() if local else spec).encode(),
                                      digest_size=4).hexdigest()
    return model_cache_dir() / kind / (name + (f"-first{limit}" if limit else ""))


def _show(text: str) -> str:
    text = text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def token_labels(tokenizer, n: int) -> list[str]:
    """Readable text of token ids 0..n-1 (␣ for a space, ↵ for a newline; raw piece for byte fragments)."""
    m = min(n, len(tokenizer))
    decoded = tokenizer.batch_decode([[i] for i in range(m)])
    raw = tokenizer.convert_ids_to_tokens(list(range(m)))
    out = [_show(r if "\ufffd" in d or not d else d) for d, r in zip(decoded, raw)]
    return out + [f"<id {i}>" for i in range(m, n)]


def search_tokens(query: str, tokenizer, labels: list[str]) -> np.ndarray:
    """Token ids of a word: its tokenisation with and without a leading space, plus tokens spelt like it."""
    q = query.strip()
    if not q:
        return np.zeros(0, np.int64)
    ids = set(tokenizer.encode(q, add_special_tokens=False)) | set(tokenizer.encode(" " + q, add_special_tokens=False))
    want = _show(q).lower()
    ids |= {i for i, t in enumerate(labels) if t.lstrip("␣").lower() == want}
    return np.array(sorted(i for i in ids if i < len(labels)), np.int64)


def _tops(labels, idx: np.ndarray, sims: np.ndarray, exact: np.ndarray | None = None) -> str:
    """'token cos, ...'; with exact ids each answer is marked ✓ (exact search agrees) or ✗ (it does not)."""
    mark = (lambda i: "") if exact is None else (lambda i: " ✓" if i in exact else " ✗")
    return ", ".join(f"{labels[i]} {s:.2f}{mark(i)}" for i, s in zip(idx, sims) if i >= 0)


def neighbour_table(prompts: list[tuple[str, np.ndarray]], exact: ExactCosine, forest, labels: list[str], k: int,
                    candidates: int | None = None, token_norm: float | None = None) -> tuple[pd.DataFrame, float]:
    """One row per virtual token: exact top-k and LSH-forest top-k with cosines; (table, recall@k overall).

    prompts: (label, vectors (P, D)). Cosines are on mean-centred embeddings; the forest's
    candidates (default k * forest.candidates_per_k) are re-ranked by exact cosine, and its recall is
    measured against exact top-k; each LSH answer is marked ✓ when exact search has it in its top-k
    too, ✗ when not, and "exact agrees" says how many of the k agree. With token_norm (the median vocabulary norm) a norm-ratio column is added.
    """
    rows, ex_all, ap_all = [], [], []
    for label, vectors in prompts:
        ex_i, ex_s = exact.query(vectors, k)  # (P, k)
        ap_i, ap_s = forest.query(vectors, k, candidates)  # (P, k)
        norms = np.linalg.norm(vectors, axis=1)  # (P,)
        for j in range(len(vectors)):
            row = {"prompt": label, "virtual token": j, "nearest token": labels[ex_i[j, 0]],
                   "cosine to nearest": float(ex_s[j, 0]), "distance to nearest (1 - cos)": float(1.0 - ex_s[j, 0])}
            if token_norm:
                row["norm / median token norm"] = float(norms[j] / token_norm)
            agree = recall_at_k(ap_i[j:j + 1], ex_i[j:j + 1])
            rows.append({**row, f"LSH recall@{k}": agree,
                         "exact agrees": "yes" if agree == 1.0 else f"{round(agree * k)}/{k}",
                         f"exact top-{k}": _tops(labels, ex_i[j], ex_s[j]),
                         f"LSH forest top-{k}": _tops(labels, ap_i[j], ap_s[j], set(ex_i[j].tolist()))})
        ex_all.append(ex_i)
        ap_all.append(ap_i)
    recall = recall_at_k(np.concatenate(ap_all), np.concatenate(ex_all)) if rows else float("nan")
    return pd.DataFrame(rows), recall


def table_bytes(frame: pd.DataFrame, fmt: str) -> bytes:
    """A table as CSV (UTF-8) or Parquet bytes, for download buttons."""
    if fmt == "csv":
        return frame.to_csv(index=False).encode("utf-8")
    if fmt == "parquet":
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        return buf.getvalue()
    raise ValueError(f"fmt must be 'csv' or 'parquet', got {fmt!r}")


def graphistry_settings(env=None, secrets=None) -> dict | None:
    """Server and credentials from the environment, else from a [graphistry] secrets mapping.

    None unless there is a server and one complete credential (see docs/configuration.md).
    """
    env = os.environ if env is None else env
    secrets = {str(k).lower(): v for k, v in dict(secrets or {}).items()}
    found = {}
    for key, names in GRAPHISTRY_FIELDS.items():
        value = next((env[n] for n in names if env.get(n)), None) or secrets.get(key) or secrets.get(f"api_{key}")
        if value:
            found[key] = str(value).strip()
    if not found.get("server") or not any(all(found.get(f) for f in group) for group in GRAPHISTRY_AUTH):
        return None
    return found


def _scrub(text: str, settings: dict) -> str:
    for key in ("password", "personal_key_secret", "token"):
        if settings.get(key):
            text = text.replace(settings[key], "***")
    return text


def graphistry_plotter(client, nodes: pd.DataFrame, edges: pd.DataFrame, colors: dict[str, str]):
    """The graph bound for Graphistry: anchors at their fixed x/y (the tree layout; play=0 keeps it), colour by run."""
    return (client.nodes(nodes, "id").edges(edges, "src", "dst")
            .bind(point_title="label", point_x="x", point_y="y", edge_weight="weight")
            .encode_point_color("run", categorical_mapping=colors, default_mapping="#94A3B8")
            .encode_edge_color("run", categorical_mapping=colors, default_mapping="#CBD5E1")
            .settings(url_params={"play": 0}))


def graphistry_upload(nodes: pd.DataFrame, edges: pd.DataFrame, settings: dict, colors: dict[str, str],
                      name: str) -> str:
    """Upload the graph and return its URL. An isolated graphistry client holds the credentials in
    memory only (nothing is written to disk); errors never quote a secret."""
    import graphistry

    auth = next({f: settings[f] for f in group} for group in GRAPHISTRY_AUTH if all(settings.get(f) for f in group))
    try:
        client = graphistry.client()
        client.register(api=3, server=settings["server"], protocol=settings.get("protocol") or "https", **auth)
        return str(graphistry_plotter(client, nodes, edges, colors).plot(
            render=False, name=name, description="Soft Prompt Workbench: prompt tokens among the vocabulary "
            "embeddings (positions: the vocabulary tree's layout)"))
    except Exception as e:  # network, auth and server errors of any kind
        raise WorkbenchError(f"Graphistry upload to {settings['server']} failed: {_scrub(str(e), settings)}") from None
