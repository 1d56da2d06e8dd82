"""Tuning-step cost on the bundled model: one training step of prompt tuning (20 virtual tokens,
batch 8, 64-token inputs) against one plain no-grad forward pass over the same batch; PEFT's own
loss path against the workbench's (core/train/fastloss.py); a long batch whole and in pieces
(core/train/pieces.py); the Trainer loop against a bare PyTorch loop.

Forward baselines, all no-grad over the same rows: the base model as the workbench loads it
(its frozen linear layers on oneDNN, core/model/kernels.py: the same kernels the step uses), the base
model as stock transformers runs it (PyTorch's default CPU matmul), and the PEFT model (its 20
virtual tokens included). Step and forward are timed alternately, so a busy moment of the
machine hits both; the other baselines alternate with the forward in a second round. The process keeps its freed memory for the next step, as a training process
does (core/model/heap.py). Prints each figure with its ratio and writes bench-results/train_step.json.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import stock_model, timed  # noqa: E402
from core.config import TuneConfig  # noqa: E402
from core.train.fastloss import labelled_loss  # noqa: E402
from core.generate.formatting import IGNORE, PadCollator  # noqa: E402
from core.model.heap import keep_freed_memory  # noqa: E402
from core.train.methods import build_peft_model  # noqa: E402
from core.model.loading import load_model  # noqa: E402
from core.tasks import load_task  # noqa: E402

B, T_IN, T_OUT, N_VIRT, REPS = 8, 64, 16, 20, 5


def batch_of(tok) -> dict:
    rows = load_task("summarisation").train[:B]
    items = []
    for r in rows:
        x = tok(r["input"], add_special_tokens=False)["input_ids"][:T_IN]
        y = tok(" " + r["target"], add_special_tokens=False)["input_ids"][:T_OUT]
        items.append({"input_ids": x + y, "labels": [IGNORE] * len(x) + y})
    return PadCollator(tok.pad_token_id)(items)


def alternating(fns: dict, reps: int = REPS + 3) -> dict:
    """Median seconds of each function, timed in turn rep after rep."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> dict:
    keep_freed_memory()  # as a training process runs (core/training.train)
    lm = load_model("smollm2-135m-instruct")
    stock = stock_model()
    batch = batch_of(lm.tokenizer)
    model = build_peft_model(lm.model, lm.tokenizer, TuneConfig(num_virtual_tokens=N_VIRT), lm.path)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)

    def forward_only(m=lm.model):
        with torch.no_grad():
            m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    def peft_forward():
        with torch.no_grad():
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    def step(loss_fn, bf16=False):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # as the Trainer does for precision=bf16
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad()

    def forward_bf16():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    peft_loss = lambda: model(**batch).loss  # noqa: E731
    ours = lambda: labelled_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])  # noqa: E731
    # the target's pair alternates on its own; the other baselines with the forward in a second
    # round, scaled to the first round's forward
    t = alternating({"forward": forward_only, "step": lambda: step(ours)})
    others = alternating({"forward": forward_only, "stock_forward": lambda: forward_only(stock),
                          "peft_forward": peft_forward, "peft_step": lambda: step(peft_loss)})
    t.update({k: v * t["forward"] / others["forward"] for k, v in others.items() if k != "forward"})
    fwd, our_step, peft_step = t["forward"], t["step"], t["peft_step"]
    bf16_step, bf16_fwd = timed(lambda: step(ours, bf16=True)), timed(forward_bf16)
    out = {"batch": B, "input_tokens": T_IN, "target_tokens": T_OUT, "virtual_tokens": N_VIRT,
           "threads": torch.get_num_threads(), "forward_s": fwd, "peft_step_s": peft_step, "step_s": our_step,
           "peft_step_over_forward": peft_step / fwd, "step_over_forward": our_step / fwd, "target_ratio": 1.8,
           "stock_forward_s": t["stock_forward"], "step_over_stock_forward": our_step / t["stock_forward"],
           "peft_forward_s": t["peft_forward"], "step_over_peft_forward": our_step / t["peft_forward"],
           "bf16_step_s": bf16_step, "bf16_step_over_forward": bf16_step / fwd, "bf16_forward_s": bf16_fwd,
           "bf16_step_over_bf16_forward": bf16_step / bf16_fwd}
    out.update(pieces_cost(lm.tokenizer, model, step))
    loops = sorted((loop_overhead(lm) for _ in range(3)), key=lambda r: r["trainer_over_bare"])
    out.update(loops[1])  # the median of three: one busy moment of the machine moves a single pair by ~4%
    out["trainer_over_bare_runs"] = [round(r["trainer_over_bare"], 3) for r in loops]
    return out


def pieces_cost(tok, model, step, reps: int = 3) -> dict:
    """Summarisation's longest training rows (8 x ~93 tokens) as one piece and in pieces of at most
    WORKBENCH_STEP_TOKENS, and never more than half the batch (core/train/pieces.py), timed in turn:
    what bounding a step's memory costs in time."""
    from core import settings
    from core.train.pieces import loss_in_pieces

    rows = sorted(load_task("summarisation").train, key=lambda r: -len(r["input"]))[:B]
    items = []
    for r in rows:
        x = tok(r["input"], add_special_tokens=False)["input_ids"][:192]
        y = tok(" " + r["target"], add_special_tokens=False)["input_ids"][:48]
        items.append({"input_ids": x + y, "labels": [IGNORE] * len(x) + y})
    long = PadCollator(tok.pad_token_id)(items)
    budget = min(settings.SETTINGS.step_tokens, long["input_ids"].numel() // 2 + 1) or 1  # at least two pieces

    def loss_of(b):
        return labelled_loss(model, b["input_ids"], b["attention_mask"], b["labels"])

    t = alternating({"whole": lambda: step(lambda: loss_of(long)),
                     "pieces": lambda: step(lambda: loss_in_pieces(loss_of, long, budget, lambda l: l.backward()))},
                    reps=reps)
    return {"long_batch_tokens": int(long["input_ids"].numel()), "step_tokens": budget, "long_whole_s": t["whole"],
            "long_pieces_s": t["pieces"], "long_pieces_over_whole": t["pieces"] / t["whole"]}


def loop_overhead(lm, steps: int = 12) -> dict:
    """Seconds per step of the Trainer loop as configured for runs, and of a bare loop doing the same work."""
    import os
    import tempfile

    from transformers import TrainerCallback

    from core.train import training
    from core.store.runs import new_run

    from core.store.paths import model_cache_dir
    os.environ["WORKBENCH_MODEL_CACHE"] = str(model_cache_dir())  # keep the converted model, not the runs
    os.environ["WORKBENCH_HOME"] = tempfile.mkdtemp()
    cfg = TuneConfig(num_virtual_tokens=N_VIRT, max_steps=steps, batch_size=B, eval_every=10_000,
                     save_every=10_000, prompt_format="plain", max_input_tokens=T_IN, max_target_tokens=T_OUT)
    run = new_run(cfg)
    marks: list[float] = []

    class StepClock(TrainerCallback):  # the time at the end of every optimizer step
        def on_step_end(self, args, state, control, **kw):
            marks.append(time.perf_counter())
    trainer, _ = training.setup(run, cfg, None, extra_callbacks=(StepClock(),))
    trainer.args.eval_on_start = False  # the loop alone: no evaluation or sample generation
    trainer.train()
    trainer_s = statistics.median(b - a for a, b in zip(marks, marks[1:]))  # steady state: step 2 onwards
    # the same work by hand: same model, data order, optimizer, schedule, clipping
    model, loader = trainer.model, trainer.get_train_dataloader()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    bare = [time.perf_counter()]
    for i, b in zip(range(steps), loader):
        loss = labelled_loss(model, b["input_ids"], b["attention_mask"], b["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad()
        bare.append(time.perf_counter())
    bare_s = statistics.median(b - a for a, b in zip(bare[1:], bare[2:]))
    return {"trainer_step_s": trainer_s, "bare_step_s": bare_s, "trainer_over_bare": trainer_s / bare_s,
            "trainer_target_ratio": 1.05}


if __name__ == "__main__":
    res = main()
    print(f"forward (no grad)        {res['forward_s']:.3f} s  base model, oneDNN matmul (the step's kernels)")
    print(f"stock forward            {res['stock_forward_s']:.3f} s  base model, PyTorch's default CPU matmul")
    print(f"PEFT model forward       {res['peft_forward_s']:.3f} s  virtual tokens included")
    print(f"PEFT loss step           {res['peft_step_s']:.3f} s  = {res['peft_step_over_forward']:.2f}x forward")
    print(f"workbench step           {res['step_s']:.3f} s  = {res['step_over_forward']:.2f}x forward (target <= 1.8x), "
          f"{res['step_over_stock_forward']:.2f}x the stock forward, {res['step_over_peft_forward']:.2f}x the PEFT "
          "model's forward")
    print(f"bf16 labelled-loss step  {res['bf16_step_s']:.3f} s  = {res['bf16_step_over_forward']:.2f}x the fp32 forward, "
          f"{res['bf16_step_over_bf16_forward']:.2f}x a bf16 forward")
    print(f"long batch ({res['long_batch_tokens']} tokens) in pieces of {res['step_tokens']} / whole: "
          f"{res['long_pieces_s']:.3f} / {res['long_whole_s']:.3f} s = {res['long_pieces_over_whole']:.2f}x")
    print(f"Trainer loop / bare loop {res['trainer_step_s']:.3f} / {res['bare_step_s']:.3f} s = "
          f"{res['trainer_over_bare']:.3f}x (target <= 1.05x; median of {res['trainer_over_bare_runs']})")
    Path("bench-results").mkdir(exist_ok=True)
    Path("bench-results/train_step.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res))
