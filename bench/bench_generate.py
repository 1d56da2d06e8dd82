"""Comparison-generation throughput on the bundled model: the workbench's KV-cached generator
against PEFT's / transformers' own `generate`, same inputs, same batch size, greedy.

1. soft prompt: 50 virtual tokens (prompt tuning), 32 inputs from the paraphrase task, 32 new
   tokens, batch 8. PEFT's batched generate on a stock transformers model is the baseline; the
   reference outputs are PEFT's generate one input at a time (PEFT drops position ids, so its
   left-padded batches shift the positions of shorter rows; the count of rows where that
   changes its output is reported).
2. hard prompt with a long fixed prefix (a 4-shot template): transformers' generate, batched.
Where the speed-up comes from: the same baselines run again on the workbench's own model load,
whose frozen linear layers use oneDNN (core/model/kernels.py); what remains is the generator's own
part (prefix caches computed once, continuous batching).
Prints tokens/s and the speed-ups, asserts identical greedy outputs, writes bench-results/generate.json.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from peft import PeftModel  # noqa: E402

from bench.common import stock_model  # noqa: E402
from core.config import TuneConfig  # noqa: E402
from core.generate.formatting import Formatter  # noqa: E402
from core.generate.generator import Decoding, Generator, System  # noqa: E402
from core.train.methods import build_peft_model  # noqa: E402
from core.model.loading import load_model  # noqa: E402
from core.tasks import few_shot_template, load_task  # noqa: E402

N_INPUTS, N_VIRT, NEW, BATCH = 32, 50, 32, 8


def hf_generate(model, fmt: Formatter, inputs: list[str], batch: int) -> tuple[list[list[int]], float, int]:
    """Batched left-padded generate (inputs sorted by length, as a fair baseline)."""
    tok = fmt.tokenizer
    ids = [fmt.prompt_ids(x) for x in inputs]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[list[int]] = [[] for _ in ids]
    t0 = time.perf_counter()
    for b in range(0, len(order), batch):
        idx = order[b:b + batch]
        w = max(len(ids[i]) for i in idx)
        x = torch.tensor([[tok.pad_token_id] * (w - len(ids[i])) + ids[i] for i in idx])
        m = torch.tensor([[0] * (w - len(ids[i])) + [1] * len(ids[i]) for i in idx])
        with torch.no_grad():
            g = model.generate(input_ids=x, attention_mask=m, max_new_tokens=NEW, do_sample=False,
                               pad_token_id=tok.pad_token_id)
        for i, row in zip(idx, g[:, w:].tolist()):
            out[i] = _cut(row, tok)
    return out, time.perf_counter() - t0, sum(map(len, out))


def _cut(row: list[int], tok) -> list[int]:
    stops = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}
    for j, t in enumerate(row):
        if t in stops:
            return row[:j + 1]
    return row


def ours(gen: Generator, system: System, inputs: list[str]) -> tuple[list[list[int]], float, int]:
    encoded = [(system, gen.formatter(system).prompt_ids(x)) for x in inputs]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][1]))  # as Generator.generate does
    gen._prefix.clear()
    t0 = time.perf_counter()
    out: list[list[int]] = [[] for _ in inputs]
    for i, toks in zip(order, gen._generate_batch([encoded[i] for i in order], Decoding(max_new_tokens=NEW), None)):
        out[i] = toks
    return out, time.perf_counter() - t0, sum(map(len, out))


def decode_step_ms(model, context: int = 100) -> dict:
    """Milliseconds of one cached decode step at several batch sizes: flat = bound by reading the weights."""
    from transformers import DynamicCache
    out = {}
    for b in (1, 8, 32):
        with torch.no_grad():
            cache = DynamicCache()
            model(input_ids=torch.ones((b, context), dtype=torch.long), past_key_values=cache, use_cache=True,
                  logits_to_keep=1)
            times = []
            for i in range(6):
                pos = torch.full((b, 1), context + i)
                t0 = time.perf_counter()
                model(input_ids=torch.ones((b, 1), dtype=torch.long), position_ids=pos, past_key_values=cache,
                      use_cache=True, logits_to_keep=1)
                times.append(time.perf_counter() - t0)
        out[b] = round(1000 * sorted(times)[len(times) // 2], 1)
    return out


def main() -> dict:
    lm = load_model("smollm2-135m-instruct")
    task = load_task("paraphrase")
    inputs = [r["input"] for r in (task.test + task.validation + task.train)[:N_INPUTS]]
    gen = Generator(lm.model, lm.tokenizer, batch_size=BATCH)
    res = {"inputs": N_INPUTS, "new_tokens": NEW, "batch": BATCH, "threads": torch.get_num_threads()}

    # 1. a 50-token soft prompt
    folder = tempfile.mkdtemp()
    torch.manual_seed(0)
    cfg = TuneConfig(num_virtual_tokens=N_VIRT, init="text", init_text="Rewrite the sentence with other words:")
    build_peft_model(lm.model, lm.tokenizer, cfg, lm.path).save_pretrained(folder)
    stock = stock_model()
    peft = PeftModel.from_pretrained(stock, folder).eval()
    peft_same_kernels = PeftModel.from_pretrained(load_model("smollm2-135m-instruct").model, folder).eval()
    system = System("soft", "{input}", "chat", folder)
    fmt = gen.formatter(system)
    ref_single = [hf_generate(peft, fmt, [x], 1)[0][0] for x in inputs]
    peft_out, peft_s, peft_n = hf_generate(peft, fmt, inputs, BATCH)
    _, same_s, same_n = hf_generate(peft_same_kernels, fmt, inputs, BATCH)
    our_out, our_s, our_n = ours(gen, system, inputs)
    assert our_out == ref_single, "greedy outputs differ from PEFT's unbatched generate"
    wide = Generator(lm.model, lm.tokenizer, batch_size=4 * BATCH)  # the Compare page's own batch size
    wide_out, wide_s, wide_n = ours(wide, system, inputs)
    res["soft_ours_batch32_tok_s"] = wide_n / wide_s
    res["soft_ours_batch32_identical"] = wide_out == ref_single
    res["soft"] = {"peft_tok_s": peft_n / peft_s, "ours_tok_s": our_n / our_s, "speedup": (our_n / our_s) / (peft_n / peft_s),
                   "peft_same_kernels_tok_s": same_n / same_s, "speedup_same_kernels": (our_n / our_s) / (same_n / same_s),
                   "identical_to_peft_unbatched": True,
                   "peft_batched_rows_changed_by_padding": sum(a != b for a, b in zip(peft_out, ref_single))}
    del peft_same_kernels

    # 2. a hard prompt with a long fixed prefix
    system = System("4-shot", few_shot_template(task, 4), "chat")
    fmt = gen.formatter(system)
    hf_out, hf_s, hf_n = hf_generate(stock, fmt, inputs, BATCH)
    _, same_s, same_n = hf_generate(lm.model, fmt, inputs, BATCH)
    our_out, our_s, our_n = ours(gen, system, inputs)
    res["hard_prefix_tokens"] = len(fmt.prompt_ids("")) - 1
    assert our_out == hf_out, "greedy outputs differ from transformers' generate"
    res["hard"] = {"hf_tok_s": hf_n / hf_s, "ours_tok_s": our_n / our_s, "speedup": (our_n / our_s) / (hf_n / hf_s),
                   "hf_same_kernels_tok_s": same_n / same_s, "speedup_same_kernels": (our_n / our_s) / (same_n / same_s),
                   "identical": True}
    res["decode_step_ms_by_batch"] = decode_step_ms(lm.model)
    res["decode_step_ms_by_batch_stock"] = decode_step_ms(stock)
    return res


if __name__ == "__main__":
    r = main()
    print(f"soft prompt ({N_VIRT} tokens): PEFT {r['soft']['peft_tok_s']:.1f} tok/s, ours {r['soft']['ours_tok_s']:.1f} "
          f"tok/s = {r['soft']['speedup']:.2f}x (target >= 2x); identical greedy outputs; PEFT's own batches "
          f"changed {r['soft']['peft_batched_rows_changed_by_padding']} of {N_INPUTS} rows")
    print(f"  PEFT on the workbench's oneDNN model load: {r['soft']['peft_same_kernels_tok_s']:.1f} tok/s: the "
          f"generator alone = {r['soft']['speedup_same_kernels']:.2f}x")
    print(f"hard prompt (~{r['hard_prefix_tokens']} fixed tokens): transformers {r['hard']['hf_tok_s']:.1f} tok/s, "
          f"ours {r['hard']['ours_tok_s']:.1f} tok/s = {r['hard']['speedup']:.2f}x; identical greedy outputs")
    print(f"  transformers on the oneDNN model load: {r['hard']['hf_same_kernels_tok_s']:.1f} tok/s: the generator "
          f"alone = {r['hard']['speedup_same_kernels']:.2f}x")
    print(f"soft prompt, ours at batch {4 * BATCH} (the Compare page's): {r['soft_ours_batch32_tok_s']:.1f} tok/s = "
          f"{r['soft_ours_batch32_tok_s'] / r['soft']['peft_tok_s']:.2f}x PEFT at batch {BATCH}; identical outputs: "
          f"{r['soft_ours_batch32_identical']}")
    print(f"one cached decode step, ms by batch size: {r['decode_step_ms_by_batch']} "
          f"(stock matmul: {r['decode_step_ms_by_batch_stock']})")
    Path("bench-results").mkdir(exist_ok=True)
    Path("bench-results/generate.json").write_text(json.dumps(r, indent=2))
    print(json.dumps(r))
