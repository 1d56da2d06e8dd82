"""The KV-cached batched generator against plain PEFT generate, on a tiny llama."""
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from core.config import TuneConfig
from core.generate.formatting import Formatter
from core.generate.batching import common_prefix
from core.generate.generator import Decoding, Generator, System
from core.train.methods import build_peft_model
from core.model.loading import load_model
from tests.conftest import peft_reference

INPUTS = ["Say apple", "Say a much longer thing please", "Say river", "x"]
METHODS = [dict(method="prompt-tuning", init="random"), dict(method="p-tuning", encoder_type="mlp"),
           dict(method="p-tuning", encoder_type="lstm"), dict(method="prefix-tuning"),
           dict(method="prefix-tuning", prefix_projection=True)]


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return load_model(tiny_model_dir)


def save_adapter(tiny_model_dir, tokenizer, tmp_path, **kw):
    torch.manual_seed(1)
    cfg = TuneConfig(num_virtual_tokens=3, encoder_hidden_size=8, **kw)
    model = build_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, cfg, tiny_model_dir)
    with torch.no_grad():  # make the prompt matter: scale it up from its small random init
        for p in model.prompt_encoder.parameters():
            p.mul_(20)
    model.save_pretrained(tmp_path)
    return str(tmp_path)


def peft_greedy(model_dir, adapter, system, tokenizer, n=8):
    return peft_reference(model_dir, adapter, system.template, system.prompt_format, tokenizer, INPUTS, n)


@pytest.mark.parametrize("kw", METHODS, ids=lambda k: "-".join(str(v) for v in k.values()))
def test_soft_prompts_match_peft_generate(lm, tiny_model_dir, tokenizer, tmp_path, kw):
    adapter = save_adapter(tiny_model_dir, tokenizer, tmp_path, **kw)
    system = System("soft", prompt_format="chat", adapter_dir=adapter)
    gen = Generator(lm.model, lm.tokenizer, batch_size=4)
    assert gen.generate([(system, x) for x in INPUTS], Decoding(max_new_tokens=8)) == \
        peft_greedy(tiny_model_dir, adapter, system, tokenizer)


@pytest.mark.parametrize("system", [System("bare", prompt_format="plain"),
                                    System("hard", template="Repeat: {input}\nAnswer:", prompt_format="chat")])
def test_bare_and_hard_prompts_match_generate(lm, tiny_model_dir, tokenizer, system):
    gen = Generator(lm.model, lm.tokenizer, batch_size=3)
    assert gen.generate([(system, x) for x in INPUTS], Decoding(max_new_tokens=8)) == \
        peft_greedy(tiny_model_dir, None, system, tokenizer)


def test_mixed_batches_equal_rows_alone_and_prefix_is_computed_once(lm, tiny_model_dir, tokenizer, tmp_path):
    a = System("a", adapter_dir=save_adapter(tiny_model_dir, tokenizer, tmp_path / "a", method="prompt-tuning"))
    b = System("b", adapter_dir=save_adapter(tiny_model_dir, tokenizer, tmp_path / "b", method="prefix-tuning"))
    hard = System("hard", template="Repeat: {input}")
    rows = [(s, x) for s in (a, b, hard) for x in INPUTS]
    together = Generator(lm.model, lm.tokenizer, batch_size=12)
    mixed = together.generate(rows, Decoding(max_new_tokens=6))
    alone = Generator(lm.model, lm.tokenizer, batch_size=1)
    assert mixed == [alone.generate([r], Decoding(max_new_tokens=6))[0] for r in rows]
    # one batch of 12 rows: one prefix cache per system, not one per row
    assert len(together._prefix) == 3


def test_in_memory_prompts_of_one_length_share_one_prefix_pass_and_score_as_alone(lm):
    """An importance pass's variants (vectors in memory, the same length): their prefixes come from one
    batched forward, and each row's log-likelihood is what that prompt gets scored alone."""
    width = lm.model.config.hidden_size
    vectors = [torch.randn(3, width, generator=torch.Generator().manual_seed(j)).numpy() * 20 for j in range(4)]
    prompts = [System(f"v{j}", vectors=v) for j, v in enumerate(vectors)]
    prompts.append(System("short", vectors=vectors[0][:2]))  # another length: a pass of its own
    rows = [(s, x, "river") for s in prompts for x in INPUTS]
    calls = []
    hook = lm.model.register_forward_hook(lambda m, a, k, out: calls.append(k["inputs_embeds"].shape[0]
                                                                         if k.get("inputs_embeds") is not None else 0),
                                          with_kwargs=True)
    try:
        gen = Generator(lm.model, lm.tokenizer)
        together = gen.log_likelihood(rows)
        prefix_passes = [b for b in calls if b]
    finally:
        hook.remove()
    assert sorted(prefix_passes) == [1, 4]  # the four of one length at once, the shorter one alone
    alone = [Generator(lm.model, lm.tokenizer).log_likelihood([r])[0] for r in rows]
    assert together == pytest.approx(alone, abs=1e-5)
    assert max(together) - min(together) > 1e-4  # the prompts do differ: 10x the tolerance above


def test_sampling_is_seeded(lm):
    gen = Generator(lm.model, lm.tokenizer)
    rows = [(System("bare"), x) for x in INPUTS]
    d = Decoding(max_new_tokens=6, temperature=1.0, top_p=0.9, seed=3)
    assert gen.generate(rows, d) == gen.generate(rows, d)


def test_common_prefix_leaves_each_row_a_token():
    assert common_prefix([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert common_prefix([[1, 2], [1, 2]]) == 1
    assert common_prefix([[7]]) == 0


@pytest.mark.parametrize("kw", [dict(method="prompt-tuning"), dict(method="prefix-tuning"), None])
def test_reference_log_likelihood_matches_the_peft_loss(lm, tiny_model_dir, tokenizer, tmp_path, kw):
    adapter = save_adapter(tiny_model_dir, tokenizer, tmp_path, **kw) if kw else None
    system = System("s", template="Q: {input}", adapter_dir=adapter)
    pairs = [("Say apple", "apple"), ("Say apple", "apple"), ("Say a longer river", "the river flows")]
    ours = Generator(lm.model, lm.tokenizer, batch_size=3).log_likelihood([(system, x, t) for x, t in pairs])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ref = (PeftModel.from_pretrained(base, adapter) if adapter else base).eval()
    fmt = Formatter(tokenizer, "chat", "Q: {input}")
    for (x, t), value in zip(pairs, ours):
        enc = fmt.encode({"input": x, "target": t})
        with torch.no_grad():
            loss = ref(input_ids=torch.tensor([enc["input_ids"]]), labels=torch.tensor([enc["labels"]])).loss
        assert value == pytest.approx(-loss.item(), abs=1e-4)


@pytest.mark.parametrize("kw,one_row_at_a_time", [(dict(method="prompt-tuning"), False),
                                                  (dict(method="prefix-tuning"), False),
                                                  (dict(method="prompt-tuning"), True)])
def test_scored_generation_reads_the_log_likelihood_off_the_prefill(lm, tiny_model_dir, tokenizer, tmp_path, kw,
                                                                     one_row_at_a_time, monkeypatch):
    """generate_scored gives the outputs generate gives and the log-likelihoods log_likelihood gives,
    across systems, target lengths and prefills that join a running batch (batch of 4, 9 rows), also
    when long references make the target pass run a few rows at a time."""
    if one_row_at_a_time:
        from core.generate import loglik
        monkeypatch.setattr(loglik, "LOGITS_AT_ONCE", 1)
        monkeypatch.setattr(loglik, "CACHE_AT_ONCE", 1)
    soft = System("s", template="Q: {input}", adapter_dir=save_adapter(tiny_model_dir, tokenizer, tmp_path, **kw))
    pairs = [("Say apple", "apple"), ("Say a longer river", "the river flows on"), ("Hi", "a")]
    rows = [(s, x, t) for s in (soft, System("bare"), System("plain", prompt_format="plain")) for x, t in pairs]
    gen = Generator(lm.model, lm.tokenizer, batch_size=4)
    outs, lls = gen.generate_scored(rows, Decoding(max_new_tokens=5))
    assert outs == gen.generate([r[:2] for r in rows], Decoding(max_new_tokens=5))
    assert lls == pytest.approx(gen.log_likelihood(rows), abs=1e-5)
    assert len(set(round(x, 4) for x in lls)) > 3  # rows differ: the values are each row's own


def test_a_model_that_scales_its_logits_is_scored_through_its_own_forward(lm, monkeypatch):
    """The LM head runs on the target positions alone only where the logits are nothing but
    head(body(...)); a model that changes them after its head (a logit scale or cap) is scored whole."""
    from core.generate import loglik
    rows = [(System("bare"), x, t) for x, t in [("Say apple", "apple"), ("Say a longer river", "the river flows")]]
    gen = Generator(lm.model, lm.tokenizer)
    assert loglik.body_and_head(lm.model) is not None
    split = gen.log_likelihood(rows)
    monkeypatch.setattr(loglik, "body_and_head", lambda model: None)
    assert gen.log_likelihood(rows) == pytest.approx(split, abs=1e-5)  # the whole-forward path, same values
    monkeypatch.undo()
    model = AutoModelForCausalLM.from_pretrained(lm.model.config.name_or_path).eval()
    plain = type(model).forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: _halved(plain(model, *a, **k)), raising=False)
    assert loglik.body_and_head(model) is None
    halved = Generator(model, lm.tokenizer).log_likelihood(rows)
    assert halved != pytest.approx(split, abs=1e-3)  # the model's own (halved) logits were read


def _halved(out):
    out.logits = out.logits / 2
    return out


def test_stop_at_newline_ends_each_row_at_its_first_break_after_text(lm):
    """Rows stop at the first line-break token once they hold text; a break before any text does not stop."""
    gen = Generator(lm.model, lm.tokenizer, batch_size=4)
    system = System("bare", prompt_format="plain")
    rows = [(system, gen.formatter(system).prompt_ids(x)) for x in INPUTS]
    sampled = dict(max_new_tokens=8, temperature=1.5)  # varied tokens (greedy repeats one on the tiny model)
    full = gen._generate_batch(rows, Decoding(**sampled), torch.Generator().manual_seed(0))
    breaks, texts = (torch.zeros(lm.model.config.vocab_size, dtype=torch.bool) for _ in range(2))
    texts[:] = True
    texts[full[0][0]] = False  # row 0 starts with a blank token ...
    breaks[full[0][0]] = True  # ... that is also a break: with no text before it, row 0 goes on
    later = next(t for t in full[1][1:] if t != full[0][0])
    breaks[later] = True
    gen._token_kinds = (breaks, texts)
    stopped = gen._generate_batch(rows, Decoding(**sampled, stop_at_newline=True), torch.Generator().manual_seed(0))

    def cut(ref):
        for i, t in enumerate(ref):
            if breaks[t] and any(texts[u] for u in ref[:i + 1]):
                return ref[:i + 1]
        return ref
    assert stopped == [cut(ref) for ref in full]
    assert len(stopped[1]) < len(full[1]) and stopped[0][0] == full[0][0]


def test_stop_at_newline_keeps_the_first_line_of_real_text(lm):
    gen = Generator(lm.model, lm.tokenizer)
    breaks, texts = gen.token_kinds()
    nl = lm.tokenizer.encode("\n", add_special_tokens=False)
    assert all(breaks[i] and not texts[i] for i in nl)
    word = lm.tokenizer.encode(" apple", add_special_tokens=False)
    assert all(texts[i] and not breaks[i] for i in word)

