"""A training batch run in pieces of at most a token budget, so the peak memory of a step is bounded.

What a training step keeps for its backward pass grows with the batch's tokens: for the bundled
model about 0.7 MB a token through the written-out stack (core/train/flatstack.py), so a
length-bucketed batch of the longest summarisation inputs (8 rows of ~240 tokens) keeps 1.3 GB
where a paraphrase batch keeps 0.3 GB, and the longest batch sets the run's peak. Here a batch
over the budget runs as pieces: its rows sorted by length and grouped greedily so that each
piece's rows x its longest row stays within the budget, each piece cut to its own longest row
(less padding than the whole batch had). The loss is the mean over the batch's labelled tokens,
so each piece's mean counts with its share of them; every piece but the last runs its backward
pass at once, and the gradient is the whole batch's (tested). A batch within the budget runs as
one piece, as before. `WORKBENCH_STEP_TOKENS` sets the budget (0 = never split);
bench/bench_memory.py measures the peaks.

Every piece is also padded to a width from a short ladder (bucket_width: a multiple of 4 between
64 and 127 tokens, of 2 between 32 and 63, ...; about 2% more positions on average), so the
step's tensors come in a few sizes. The frozen matmuls (oneDNN) pin freed blocks of each new size
in the heap that a training process keeps (core/model/heap.py): with every width its own size, a
summarisation run grew from 1.4 to 2.2 GiB in its first 7 steps. Padding positions are masked and
unlabelled: the loss and gradient are unchanged (tested).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from core.generate.formatting import IGNORE


def pieces(attention_mask: torch.Tensor, budget: int) -> list[torch.Tensor]:
    """Row indices of each piece of a right-padded batch (B, T); one piece (all rows) within the
    budget or with budget 0. A row longer than the budget is a piece of its own."""
    lengths = attention_mask.sum(1)  # (B,)
    B = len(lengths)
    if not budget or B * attention_mask.shape[1] <= budget:
        return [torch.arange(B)]
    order = torch.argsort(lengths, descending=True, stable=True).tolist()
    out, current = [], []
    for i in order:
        longest = int(lengths[current[0]]) if current else int(lengths[i])  # rows come longest first
        if current and (len(current) + 1) * longest > budget:
            out.append(torch.tensor(current))
            current = []
        current.append(i)
    out.append(torch.tensor(current))
    return out


def bucket_width(width: int) -> int:
    """`width` rounded up to a multiple of 2^(bits - 5): 1 below 32, 2 below 64, 4 below 128, 8 below 256..."""
    step = 1 << max(width.bit_length() - 5, 0)
    return -(-width // step) * step


def piece_of(inputs: dict, rows: torch.Tensor) -> dict:
    """The rows of a right-padded batch, cut to their longest row, then padded to its bucket's width
    (attention mask 0, labels IGNORE)."""
    width = int(inputs["attention_mask"][rows].sum(1).max())
    out = {k: v[rows, :width] for k, v in inputs.items()}
    extra = bucket_width(width) - width
    if extra:  # masked, unlabelled positions: any token id
        out = {k: F.pad(v, (0, extra), value=IGNORE if k == "labels" else 0) for k, v in out.items()}
    return out


def loss_in_pieces(loss_fn: Callable[[dict], torch.Tensor], inputs: dict, budget: int,
                   backward: Callable[[torch.Tensor], None]) -> torch.Tensor:
    """The batch's mean labelled-token loss, run in pieces within `budget` tokens. `loss_fn` gives a
    piece's mean loss; `backward` runs the backward pass of every piece but the last at once. The
    result's value is the whole batch's loss and its gradient is the last piece's share: its
    backward pass completes the batch's gradient."""
    parts = pieces(inputs["attention_mask"], budget)
    if len(parts) == 1:
        return loss_fn(piece_of(inputs, parts[0]))
    labelled = (inputs["labels"][:, 1:] != IGNORE).sum(1)  # (B,) the labelled tokens of each row
    total = max(int(labelled.sum()), 1)
    shares = [int(labelled[rows].sum()) / total for rows in parts]
    last = max(range(len(parts)), key=shares.__getitem__)  # a piece with labelled tokens ends the batch
    done = 0.0
    for rows, share in zip(parts, shares):
        if share and rows is not parts[last]:
            loss = loss_fn(piece_of(inputs, rows)) * share
            backward(loss)
            done += float(loss.detach())
    return loss_fn(piece_of(inputs, parts[last])) * shares[last] + done
