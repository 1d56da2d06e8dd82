"""The running batch of the generator: rows leave (keep) and join (merge) with masks, positions
and key/value caches kept aligned, right-aligned at the newest token."""
import torch
from transformers import DynamicCache

from core.generate.batching import ActiveRows

H, D = 2, 4  # heads, head size


def rows(ids: list[int], lengths: list[int], width: int) -> ActiveRows:
    """Rows whose caches hold `lengths[r]` real positions, right-aligned in `width` columns;
    each real key equals its row id + position/10, padding keys are 0."""
    b = len(ids)
    mask = torch.zeros(b, width, dtype=torch.long)
    keys = torch.zeros(b, H, width, D)
    for r, n in enumerate(lengths):
        mask[r, width - n:] = 1
        keys[r, :, width - n:] = (ids[r] + torch.arange(n) / 10)[None, :, None]
    cache = DynamicCache(ddp_cache_data=[(keys.clone(), keys.clone())])
    a = ActiveRows(torch.tensor(ids), mask, torch.tensor(lengths)[:, None], cache, torch.tensor([0]), None, 0)
    a.take(torch.tensor(ids) + 100, [[] for _ in range(10)])
    return a


def test_merge_left_pads_the_narrower_batch_and_keeps_every_row_intact():
    old, new = rows([0, 1], [5, 3], width=5), rows([2], [2], width=2)
    both = old.merge(new)
    layer = both.cache.layers[0]
    assert both.rows.tolist() == [0, 1, 2]
    assert both.mask.tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 1, 1]]
    assert layer.keys.shape == (3, H, 5, D) and layer.values.shape == (3, H, 5, D)
    assert torch.allclose(layer.keys[2, 0, -2:, 0], torch.tensor([2.0, 2.1]))  # the joining row's cache
    assert (layer.keys[2, :, :3] == 0).all()  # its left padding
    assert both.pos.tolist() == [[5], [3], [2]] and both.last.tolist() == [100, 101, 102]


def test_keep_drops_rows_and_cuts_columns_no_remaining_row_uses():
    batch = rows([0, 1, 2], [6, 2, 3], width=6)
    kept = batch.keep(torch.tensor([1, 2]))  # the longest row ended
    assert kept.rows.tolist() == [1, 2]
    assert kept.mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert kept.cache.layers[0].keys.shape == (2, H, 3, D)
    assert torch.allclose(kept.cache.layers[0].keys[1, 0, :, 0], torch.tensor([2.0, 2.1, 2.2]))
    assert kept.pos.tolist() == [[2], [3]]


def test_a_row_ends_at_a_stop_token_or_at_the_token_limit():
    batch = rows([0, 1], [2, 2], width=2)
    out = [[] for _ in range(2)]
    batch.take(torch.tensor([0, 7]), out)  # token 0 is the stop token
    assert batch.ended(max_new_tokens=5, out=out).tolist() == [True, False]
    batch.take(torch.tensor([9, 8]), out)  # a finished row takes no more tokens
    assert out == [[0], [7, 8]]
    assert batch.ended(max_new_tokens=2, out=out).tolist() == [True, True]
