"""Train a soft prompt with Hugging Face `Trainer` on the PEFT model: setup -> sanity -> fit.

The run folder is the only output: callbacks write status.json (atomically) and
metrics.jsonl; Trainer writes checkpoints/ (PEFT adapters); the final adapter goes to adapter/.
SIGTERM asks the loop to save a checkpoint and stop cleanly (state `cancelled`).
A non-finite loss stops the run with state `failed` and a message.
"""
from __future__ import annotations

import errno
import functools
import math
import os
import signal
import time
import warnings
from typing import Callable

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments, set_seed

from core import settings
from core.train.distributed import is_main_process, record_rank, world_size
from core.model.heap import keep_freed_memory
from core.config import TuneConfig
from core.train.fastloss import labelled_loss
from core.train.pieces import loss_in_pieces
from core.generate.formatting import EncodedDataset, Formatter, PadCollator
from core.generate.generator import Decoding, Generator, System
from core.generate.variants import augment, passes
from core.train.methods import build_peft_model
from core.model.device import resolve_device
from core.model.loading import is_seq2seq, load_model
from core.errors import WorkbenchError
from core.store.paths import read_json, write_json_atomic
from core.store.runs import Run, RunState
from core.tasks import load_task

SAMPLE_EVERY_EVAL = 3
warnings.filterwarnings("ignore", message="Position ids are not supported")  # validation inputs generated at each evaluation, for a look at progress


class RunCallback(TrainerCallback):
    """Mirror Trainer's progress into the run folder; honour cancel requests and NaN losses."""

    def __init__(self, run: Run, formatter: Formatter, samples: list[dict], progress: Callable | None = None,
                 stop: dict | None = None):
        self.run, self.formatter, self.samples, self.progress = run, formatter, samples, progress
        self.stop = stop if stop is not None else {"requested": False}  # set by the SIGTERM handler
        self.failure: str | None = None
        self.t0 = time.time()
        self.step0 = 0
        self.last_write = 0.0
        self.last_loss = None
        self.generator: Generator | None = None  # built at the first evaluation, on the frozen base model

    @property
    def stop_requested(self) -> bool:
        return self.stop["requested"]

    def on_train_begin(self, args, state, control, **kw):
        self.t0, self.step0 = time.time(), state.global_step
        self._status(state, force=True)

    def on_step_end(self, args, state, control, **kw):
        if self.stop_requested:
            control.should_save = True
            control.should_training_stop = True
        self._status(state, force=self.stop_requested)

    def on_log(self, args, state, control, logs=None, **kw):
        logs = dict(logs or {})
        if not state.is_world_process_zero:
            return
        if "loss" in logs:
            self.last_loss = logs["loss"]
            if not math.isfinite(float(logs["loss"])):
                self.failure = (f"The training loss became {logs['loss']} at step {state.global_step}: lower the "
                                "learning rate (or the gradient clipping norm) and start again.")
                control.should_training_stop = True
        kind = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        if kind == "train" and "loss" not in logs:
            return  # the end-of-training summary
        self.run.log_metrics({"kind": kind, "step": state.global_step, "time": time.time(), **logs})

    def on_evaluate(self, args, state, control, model=None, **kw):
        if state.is_world_process_zero and self.samples and model is not None:
            outs = self.sample_outputs(model)
            rows = [{"input": s["input"], "target": s["target"], "output": o} for s, o in zip(self.samples, outs)]
            self.run.log_metrics({"kind": "samples", "step": state.global_step, "time": time.time(), "samples": rows})

    def sample_outputs(self, model) -> list[str]:
        """The prompt as it stands, on the validation samples, through the batched generator that
        Compare and the CLI use: the adapter is saved to samples-adapter/ and read from there."""
        folder = self.run.path / "samples-adapter"
        model.save_pretrained(str(folder))
        if self.generator is None:
            fmt = self.formatter
            self.generator = Generator(model.get_base_model(), fmt.tokenizer, max_input_tokens=fmt.max_input_tokens)
        system = System("samples", self.formatter.template, self.formatter.prompt_format, str(folder))
        was_training = model.training
        model.eval()
        try:
            return self.generator.generate([(system, s["input"]) for s in self.samples],
                                           Decoding(max_new_tokens=self.formatter.max_target_tokens))
        finally:
            model.train(was_training)

    def _status(self, state, force=False):
        now = time.time()
        if not state.is_world_process_zero or (not force and now - self.last_write < 0.5):
            return
        self.last_write = now
        done = state.global_step - self.step0
        rate = (now - self.t0) / done if done else None
        eta = rate * (state.max_steps - state.global_step) if rate else None
        result = self.run.set_status(state=RunState.RUNNING, step=state.global_step, total=state.max_steps,
                                 loss=self.last_loss, eta=eta, sec_per_step=rate)
        if self.progress:
            self.progress(result)


class PromptTrainer(Trainer):
    """Trainer whose loss runs the LM head only on labelled positions (core/train/fastloss.py).
    An encoder-decoder model takes PEFT's own forward: the loss on the decoded targets."""

    loss_is_scaled_for_ga = False  # both losses are per-batch means: Trainer divides for accumulation
    seq2seq = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        peft_model = self.accelerator.unwrap_model(model)
        if self.seq2seq:
            with self.accelerator.autocast():
                loss = model(**inputs).loss
        elif peft_model is not model and torch.is_grad_enabled():
            # several processes: through DistributedDataParallel's forward, so that backward syncs the gradients
            args = (inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
            peft_model.forward = functools.partial(labelled_loss, peft_model)  # shadows the class's forward
            try:
                with self.accelerator.autocast():
                    loss = model(*args)
            finally:
                del peft_model.forward
        else:
            def piece_loss(batch):
                with self.accelerator.autocast():  # bf16 precision: labelled_loss calls past the wrapped forward
                    return labelled_loss(peft_model, batch["input_ids"], batch["attention_mask"], batch["labels"])

            loss = loss_in_pieces(piece_loss, inputs, self.step_tokens(peft_model), self.accelerator.backward)
        return (loss, {"loss": loss}) if return_outputs else loss

    def step_tokens(self, model) -> int:
        """The token budget of a training step's pieces (core/train/pieces.py): on one CPU process only
        (several processes synchronise gradients at each backward pass); 0 = the batch whole."""
        single = self.accelerator.num_processes == 1 and self.args.gradient_accumulation_steps == 1
        training = model.training and torch.is_grad_enabled()
        return settings.SETTINGS.step_tokens if single and training and model.device.type == "cpu" else 0


def training_args(cfg: TuneConfig, run: Run, device: str = "cpu") -> TrainingArguments:
    early = cfg.early_stopping_patience > 0
    return TrainingArguments(
        output_dir=str(run.checkpoints_dir), max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
        warmup_steps=min(cfg.warmup_steps, cfg.max_steps), max_grad_norm=cfg.max_grad_norm,
        lr_scheduler_type="linear", logging_steps=1, logging_nan_inf_filter=False,
        eval_strategy="steps", eval_steps=cfg.eval_every, eval_on_start=True, save_strategy="steps",
        save_steps=cfg.eval_every if early else cfg.save_every, load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None, greater_is_better=False if early else None,
        seed=cfg.seed, data_seed=cfg.seed, report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        train_sampling_strategy="group_by_length", remove_unused_columns=False, label_names=["labels"],
        save_only_model=False, use_cpu=device == "cpu", prediction_loss_only=True,
        bf16=cfg.precision.value == "bf16",  # autocast (CPU or GPU): the frozen model's matmuls in bf16, the prompt in fp32
    )


def sanity_check(model, collator, dataset) -> float:
    """One forward pass on a first batch before training: the loss must be finite."""
    batch = collator([dataset[i] for i in range(min(2, len(dataset)))])
    with torch.no_grad():
        loss = model(**{k: v.to(model.device) for k, v in batch.items()}).loss.item()
    if not math.isfinite(loss):
        raise WorkbenchError(f"The first batch already gives a loss of {loss}: check the data and the model.")
    return loss


SEQ2SEQ_NOTE = ("encoder-decoder model: the loss comes from PEFT's own forward; the fast loss, the fused kernels "
                "and the written-out decoder stack are for causal LMs and step aside")


def note_runtime(run: Run, note: str) -> None:
    """A line in the run's log and in runtime.json's `notes`: what did not apply to this run, and why."""
    print(note, flush=True)
    if is_main_process():
        runtime = read_json(run.path / "runtime.json") or {}
        runtime["notes"] = [*runtime.get("notes", []), note]
        write_json_atomic(run.path / "runtime.json", runtime)


def train(run: Run, resume: bool = False, progress: Callable | None = None, extra_callbacks: tuple = ()) -> dict:
    """Train (or resume) the run in this process; returns the final status.

    extra_callbacks: more TrainerCallbacks (a sweep's pruning callback). The SIGTERM handler
    that was installed before (a sweep's) is put back when the run ends.
    """
    cfg = run.config()
    checkpoint = run.last_checkpoint() if resume else None
    if resume and checkpoint is None and run.checkpoints():
        raise WorkbenchError(f"Run {run.id!r} has no complete checkpoint to resume from: start it again.")
    # under `accelerate launch` every process trains; only the main one writes the run's files
    status = run.set_status if is_main_process() else (lambda **kw: {**run.status(), **kw})
    try:
        device = resolve_device(cfg.device)
    except WorkbenchError as e:
        return status(state=RunState.FAILED, error=str(e))
    note = settings.device_note(device)  # the CPU-only fast paths step aside on a GPU: say so
    status(state=RunState.RUNNING, pid=os.getpid(), error=None, started=time.time(), device=device, note=note)
    if note and is_main_process():
        print(note, flush=True)
    if is_main_process():  # how the numbers were made: switches, fast paths, versions, machine
        write_json_atomic(run.path / "runtime.json", settings.runtime(device, cfg.precision.value, world_size()))
    if settings.fast_paths(device)["keep_heap"] is None:
        keep_freed_memory()  # each step reuses the pages of the one before (core/model/heap.py)
    t0 = time.time()
    stop = {"requested": False}  # SIGTERM at any point, even while loading, ends the run cleanly
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("requested", True))
    try:
        trainer, callback = setup(run, cfg, progress, stop, extra_callbacks, device)
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        if world_size() > 1:
            record_rank(run, trainer, device)
        if is_main_process() and not callback.failure:
            trainer.model.save_pretrained(str(run.adapter_dir))
    except WorkbenchError as e:
        return status(state=RunState.FAILED, error=str(e))
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            status(state=RunState.FAILED, error=f"{type(e).__name__}: {e}")
            raise
        last = run.last_checkpoint()
        kept = f"it goes on from {last.name}, which is kept" if last else "it has no checkpoint yet: it starts again"
        return status(state=RunState.FAILED, error=f"No space left on the disk while saving run {run.id!r} ({run.path}): "
                                            f"free space on that disk, then resume the run ({kept}).")
    except Exception as e:  # an unexpected failure: keep the message for the status view
        status(state=RunState.FAILED, error=f"{type(e).__name__}: {e}")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    elapsed = (run.status().get("elapsed") or 0) + time.time() - t0
    if callback.failure:
        return status(state=RunState.FAILED, error=callback.failure, elapsed=elapsed)
    state = RunState.CANCELLED if callback.stop_requested else RunState.COMPLETED
    return status(state=state, step=trainer.state.global_step, eta=0, elapsed=elapsed, pid=None)


def setup(run: Run, cfg: TuneConfig, progress: Callable | None, stop: dict | None = None, extra_callbacks: tuple = (),
          device: str = "cpu"):
    set_seed(cfg.seed)
    task = load_task(cfg.task, cfg.data_path, cfg.input_column, cfg.target_column)
    train_rows = task.train[: cfg.train_examples] if cfg.train_examples else task.train
    if cfg.format_augmentation:  # a reworded copy of a share of them, drawn afresh per pass (core/generate/variants.py)
        rounds = passes(len(train_rows), cfg.format_augmentation, cfg.max_steps, cfg.batch_size)
        train_rows = augment(train_rows, cfg.format_augmentation, cfg.seed, rounds)
    if cfg.batch_size > len(train_rows):
        raise WorkbenchError(f"batch_size {cfg.batch_size} is larger than the {len(train_rows)} training "
                             f"examples: use a batch size of at most {len(train_rows)}.")
    if not task.validation:
        n = len(task.train) + len(task.test)
        raise WorkbenchError(f"Task {cfg.task!r} has only {n} example(s): give at least 3 (training, validation "
                             "and test need one each; a few hundred train a useful soft prompt).")
    lm = load_model(cfg.model, cfg.trust_remote_code)
    context = getattr(lm.model.config, "max_position_embeddings", None)
    need = cfg.num_virtual_tokens + cfg.max_input_tokens + cfg.max_target_tokens + 1  # + the end marker
    if context and need > context:
        raise WorkbenchError(f"num_virtual_tokens + max_input_tokens + max_target_tokens + 1 = {need} tokens do not "
                             f"fit the model's context of {context}: lower max_input_tokens or max_target_tokens "
                             "(longer inputs and targets are truncated to them).")
    seq2seq = is_seq2seq(lm.model)
    if seq2seq:
        note_runtime(run, SEQ2SEQ_NOTE)
    fmt = Formatter(lm.tokenizer, cfg.prompt_format.value, cfg.input_template, cfg.max_input_tokens,
                    cfg.max_target_tokens, seq2seq=seq2seq)
    model = build_peft_model(lm.model, lm.tokenizer, cfg, lm.path)
    train_ds = EncodedDataset(train_rows, fmt)
    eval_ds = EncodedDataset(task.validation[: cfg.eval_examples], fmt)
    collator = PadCollator(lm.tokenizer.pad_token_id)
    sanity_check(model, collator, train_ds)
    callback = RunCallback(run, fmt, task.validation[:SAMPLE_EVERY_EVAL], progress, stop)
    callbacks = [callback, *extra_callbacks]
    if cfg.early_stopping_patience:
        from transformers import EarlyStoppingCallback
        callbacks.append(EarlyStoppingCallback(cfg.early_stopping_patience))
    trainer = PromptTrainer(model=model, args=training_args(cfg, run, device), train_dataset=train_ds,
                      eval_dataset=eval_ds if len(eval_ds) else None, data_collator=collator, callbacks=callbacks)
    trainer.seq2seq = seq2seq
    trainer.remove_callback(PrinterCallback)  # our callback reports progress; no raw dicts on stdout
    return trainer, callback
