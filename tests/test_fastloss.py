import pytest
import torch
from transformers import AutoModelForCausalLM

from core.config import TuneConfig
from core.train import fastloss
from core.train import flatstack
from core.model import fused
from core.train.fastloss import labelled_loss
from tests.conftest import assert_loss_matches_peft
from core.generate.formatting import EncodedDataset, Formatter, PadCollator
from core.train.methods import build_peft_model


LAYOUTS = ["stack", "stack, PyTorch ops, separate weights", "flat", "broadcast past"]


@pytest.fixture(params=LAYOUTS)
def layout(request, monkeypatch):
    """Every way of running the virtual tokens once: the flat sequence through the written-out
    decoder stack (llama family, float32 on the CPU; with the fused C kernels and joined weights,
    or with the PyTorch formulas and one matmul per layer), the flat sequence through the
    transformers layers, and the broadcast key/value past (every other model)."""
    if request.param == "stack, PyTorch ops, separate weights":
        monkeypatch.setattr(fused, "_forced", fused._NONE)
        monkeypatch.setattr(flatstack, "joined_weight", lambda *linears: None)
    if request.param == "flat":
        monkeypatch.setattr(flatstack, "supported", lambda base: False)
    if request.param == "broadcast past":
        monkeypatch.setattr(fastloss, "_FLAT_MODELS", set())
    return request.param


def peft_model(model_dir, tokenizer, layout, **kw):
    return build_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), tokenizer,
                            TuneConfig(num_virtual_tokens=3, encoder_hidden_size=8, **kw), model_dir)


@pytest.mark.parametrize("kw", [dict(method="prompt-tuning"), dict(method="p-tuning", encoder_type="lstm"),
                                dict(method="prefix-tuning"), dict(method="prefix-tuning", prefix_projection=True)])
def test_loss_and_gradients_equal_pefts(tiny_model_dir, tokenizer, kw, layout):
    torch.manual_seed(0)
    model = peft_model(tiny_model_dir, tokenizer, layout, **kw)
    fmt = Formatter(tokenizer, "chat", "Q: {input}")
    rows = [{"input": "short", "target": "a"}, {"input": "a much longer input here", "target": "two words"}]
    ds = EncodedDataset(rows, fmt)
    batch = PadCollator(tokenizer.pad_token_id)([ds[0], ds[1]])
    assert_loss_matches_peft(model, batch)


@pytest.mark.parametrize("method", ["prompt-tuning", "p-tuning"])
def test_virtual_tokens_run_once_per_batch_not_once_per_row(tiny_model_dir, tokenizer, method, layout, monkeypatch):
    """The decoder sees the virtual tokens once: in front of the flattened text rows, or as a row
    of their own before the text rows."""
    model = peft_model(tiny_model_dir, tokenizer, layout, method=method)
    fmt = Formatter(tokenizer, "plain", "{input}")
    rows = [{"input": f"input number {i}", "target": "yes"} for i in range(4)]
    batch = PadCollator(tokenizer.pad_token_id)([EncodedDataset(rows, fmt)[i] for i in range(4)])
    seen = []
    if layout.startswith("stack"):  # the transformers layers are not called: look at what the stack gets
        stack = flatstack.decoder_stack
        monkeypatch.setattr(flatstack, "decoder_stack", lambda base, prompt, text, *a: seen.append(
            (1, len(prompt) + len(text))) or stack(base, prompt, text, *a))
    else:
        layer = model.get_base_model().get_decoder().layers[0]
        layer.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape[:2])))
    labelled_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"]).backward()
    B, T = batch["input_ids"].shape
    assert seen == ([(1, 3 + B * T)] if layout != "broadcast past" else [(1, 3), (B, T)])


def test_hooks_on_the_layers_still_run(tiny_model_dir, tokenizer):
    """A forward hook on a decoder layer (activation capture, say) makes the loss go through the
    transformers layers, so the hook sees every pass."""
    model = peft_model(tiny_model_dir, tokenizer, "stack")
    ds = EncodedDataset([{"input": "one", "target": "two"}], Formatter(tokenizer, "plain", "{input}"))
    batch = PadCollator(tokenizer.pad_token_id)([ds[0]])
    base = model.get_base_model()
    assert flatstack.supported(base)
    seen = []
    base.get_decoder().layers[1].register_forward_hook(lambda *a: seen.append(1))
    assert not flatstack.supported(base)
    labelled_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert seen == [1]


def test_flat_layout_gives_the_model_its_attention_back_even_when_the_pass_fails(tiny_model_dir, tokenizer,
                                                                                monkeypatch):
    monkeypatch.setattr(flatstack, "supported", lambda base: False)  # the transformers layers' flat pass
    model = build_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer,
                             TuneConfig(num_virtual_tokens=3), tiny_model_dir)
    config = model.get_base_model().config
    impl = config._attn_implementation
    ds = EncodedDataset([{"input": "one", "target": "two"}], Formatter(tokenizer, "plain", "{input}"))
    batch = PadCollator(tokenizer.pad_token_id)([ds[0]])
    layer = model.get_base_model().get_decoder().layers[-1]

    def fail(mod, args):
        assert config._attn_implementation == fastloss.FLAT_ATTENTION  # the flat pass is running
        raise RuntimeError("out of memory")
    hook = layer.register_forward_pre_hook(fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        labelled_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    hook.remove()
    assert config._attn_implementation == impl


def test_one_layer_model_where_the_first_layer_is_also_the_last(tokenizer, tmp_path):
    """The stack trims the last layer to the labelled positions and stops the first layer's backward
    at the soft prompt; with one layer both happen in the same layer."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    model = build_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path), tokenizer,
                             TuneConfig(num_virtual_tokens=2), str(tmp_path))
    assert flatstack.supported(model.get_base_model())
    rows = [{"input": "one two three", "target": "four"}, {"input": "five", "target": "six seven"}]
    ds = EncodedDataset(rows, Formatter(tokenizer, "plain", "{input}"))
    batch = PadCollator(tokenizer.pad_token_id)([ds[0], ds[1]])
    params = [p for p in model.parameters() if p.requires_grad]
    ref = model(**batch).loss
    ref_grads = torch.autograd.grad(ref, params)
    ours = labelled_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    for g, r in zip(torch.autograd.grad(ours, params), ref_grads):
        assert torch.allclose(g, r, rtol=1e-4, atol=1e-6)


def test_evaluation_through_the_stack_keeps_no_activations(tiny_model_dir, tokenizer, monkeypatch):
    """Under no_grad (the Trainer's evaluation) the stack runs its layers without the autograd node
    that keeps every layer's activations for a backward pass, and gives the same loss."""
    model = peft_model(tiny_model_dir, tokenizer, "stack")
    ds = EncodedDataset([{"input": "one two", "target": "three"}], Formatter(tokenizer, "plain", "{input}"))
    batch = PadCollator(tokenizer.pad_token_id)([ds[0]])
    args = batch["input_ids"], batch["attention_mask"], batch["labels"]
    with_grad = labelled_loss(model, *args)
    kept = []
    monkeypatch.setattr(flatstack._Stack, "apply", lambda *a: kept.append(1))
    with torch.no_grad():
        loss = labelled_loss(model, *args)
    assert kept == [] and loss.item() == pytest.approx(with_grad.item(), rel=1e-6)
