"""A training batch over the token budget runs in pieces with the whole batch's loss and gradient."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from core.config import TuneConfig
from tests.conftest import assert_loss_matches_peft
from core.generate.formatting import EncodedDataset, Formatter, PadCollator
from core.train.fastloss import labelled_loss
from core.train.methods import build_peft_model
from core.train.pieces import bucket_width, loss_in_pieces, piece_of, pieces

ROWS = [{"input": "short", "target": "a"}, {"input": "a much longer input here, with more words", "target": "two words"},
        {"input": "medium input", "target": "three words here"}, {"input": "x", "target": "y"},
        {"input": "another fairly long input for the batch", "target": "z"}]


def test_pieces_keep_within_the_budget_and_cover_every_row_once():
    mask = torch.zeros(6, 40, dtype=torch.long)
    for i, n in enumerate([40, 5, 22, 30, 8, 12]):
        mask[i, :n] = 1
    parts = pieces(mask, budget=64)
    assert sorted(torch.cat(parts).tolist()) == list(range(6))
    lengths = mask.sum(1)
    for rows in parts:
        assert len(rows) == 1 or len(rows) * int(lengths[rows].max()) <= 64
    assert len(pieces(mask, budget=0)) == 1 and len(pieces(mask, budget=6 * 40)) == 1  # off / within the budget


@pytest.mark.parametrize("method", ["prompt-tuning", "prefix-tuning"])
def test_loss_and_gradient_in_pieces_equal_the_whole_batchs(tiny_model_dir, tokenizer, method):
    torch.manual_seed(0)
    model = build_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer,
                             TuneConfig(num_virtual_tokens=3, method=method), tiny_model_dir)
    ds = EncodedDataset(ROWS, Formatter(tokenizer, "plain", "Q: {input}"))
    batch = PadCollator(tokenizer.pad_token_id)([ds[i] for i in range(len(ROWS))])
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_fn(b):
        return labelled_loss(model, b["input_ids"], b["attention_mask"], b["labels"])

    whole = loss_fn(batch)
    ref = torch.autograd.grad(whole, params)
    budget = 2 * batch["input_ids"].shape[1]  # two of the longest rows a piece
    assert len(pieces(batch["attention_mask"], budget)) > 1
    loss = loss_in_pieces(loss_fn, batch, budget, backward=lambda piece: piece.backward())
    loss.backward()
    assert loss.item() == pytest.approx(whole.item(), rel=1e-5)
    for p, r in zip(params, ref):
        assert torch.allclose(p.grad, r, rtol=1e-4, atol=1e-6)



def test_widths_come_from_a_short_ladder_with_little_padding():
    widths = [bucket_width(w) for w in range(1, 257)]
    assert all(w <= b <= w * 1.07 + 1 for w, b in zip(range(1, 257), widths))  # a few percent at most
    assert len(set(widths[69:101])) <= 9  # summarisation's 70-101 tokens: a handful of sizes, not 32
    assert bucket_width(80) == 80 and bucket_width(81) == 84 and bucket_width(20) == 20


@pytest.mark.parametrize("budget", [0, 10_000])
def test_a_piece_padded_to_its_bucket_gives_the_same_loss_and_gradient(tiny_model_dir, tokenizer, budget):
    torch.manual_seed(0)
    model = build_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer,
                             TuneConfig(num_virtual_tokens=3), tiny_model_dir)
    for k in range(40, 60):  # a longest row whose width is not on the ladder
        rows = ROWS + [{"input": "word " * k, "target": "done"}]
        ds = EncodedDataset(rows, Formatter(tokenizer, "plain", "Q: {input}"))
        batch = PadCollator(tokenizer.pad_token_id)([ds[i] for i in range(len(rows))])
        width = batch["input_ids"].shape[1]
        if bucket_width(width) > width:
            break
    padded = piece_of(batch, torch.arange(len(rows)))
    assert padded["input_ids"].shape[1] == bucket_width(width) and not padded["attention_mask"][:, width:].any()
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_fn(b):
        return labelled_loss(model, b["input_ids"], b["attention_mask"], b["labels"])

    ref = loss_fn(batch)
    ref_grads = torch.autograd.grad(ref, params)
    loss = loss_in_pieces(loss_fn, batch, budget, backward=lambda piece: piece.backward())
    grads = torch.autograd.grad(loss, params)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, rtol=1e-4, atol=1e-6)


def test_labelled_rows_padded_to_the_ladder_give_pefts_loss_and_gradient(tiny_model_dir, tokenizer):
    """With more than 32 labelled tokens off the ladder, the last layer and the head run on a few
    unlabelled rows more (core/train/fastloss.py): the loss and gradient stay PEFT's."""
    torch.manual_seed(0)
    model = build_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer,
                             TuneConfig(num_virtual_tokens=3), tiny_model_dir)
    fmt = Formatter(tokenizer, "plain", "Q: {input}", max_target_tokens=64)
    for k in range(30, 60):
        rows = [{"input": "a question", "target": "word " * k}, {"input": "another", "target": "yes"}]
        batch = PadCollator(tokenizer.pad_token_id)([EncodedDataset(rows, fmt)[i] for i in range(2)])
        labelled = int((batch["labels"][:, 1:] != -100).sum())
        if labelled > 32 and bucket_width(labelled) > labelled:
            break
    assert labelled > 32 and bucket_width(labelled) > labelled  # the rows are padded
    assert_loss_matches_peft(model, batch)
