"""Turn examples into token ids: prompt part (labels -100) + target part (labels = ids).

Two formats: `chat` wraps the filled template as the user turn of the model's chat template and
the target as the assistant turn; `plain` writes "<filled template>\n<target><eos>".
The soft prompt (virtual tokens) is prepended by PEFT in front of all of this.
An encoder-decoder model (`seq2seq`) reads the filled template in its encoder, with the
tokenizer's own special tokens (T5 ends it with </s>), and is trained to decode "<target><eos>":
there the prompt is the encoder input and the labels are the target alone; no chat template.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100


def fill(template: str, text: str) -> str:
    """Put `text` where `{input}` stands (plain replace: braces in the text stay as they are)."""
    return template.replace("{input}", text)


@dataclass
class Formatter:
    tokenizer: object
    prompt_format: str = "chat"  # chat | plain
    template: str = "{input}"
    max_input_tokens: int = 256
    max_target_tokens: int = 64
    seq2seq: bool = False  # an encoder-decoder model: prompt = encoder input, labels = target ids

    def __post_init__(self):
        if self.seq2seq or (self.prompt_format == "chat" and not getattr(self.tokenizer, "chat_template", None)):
            self.prompt_format = "plain"  # models without a chat template fall back to plain text

    @property
    def end_text(self) -> str:
        return self.tokenizer.eos_token or ""

    def prompt_text(self, text: str) -> str:
        filled = fill(self.template, text)
        if self.prompt_format == "chat":
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": filled}], tokenize=False, add_generation_prompt=True
            )
        return filled if self.seq2seq else filled + "\n"

    def prompt_ids(self, text: str) -> list[int]:
        """Token ids of the prompt; the input is truncated from the left of the filled text's end."""
        ids = self.tokenizer(self.prompt_text(text), add_special_tokens=self.seq2seq)["input_ids"]
        if len(ids) > self.max_input_tokens:
            keep_tail = min(8, self.max_input_tokens // 4)  # keep the end marker / generation prompt
            ids = ids[: self.max_input_tokens - keep_tail] + ids[-keep_tail:]
        return ids

    def target_ids(self, target: str) -> list[int]:
        ids = self.tokenizer(target, add_special_tokens=False)["input_ids"][: self.max_target_tokens]
        return ids + ([self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else [])

    def encode(self, example: dict) -> dict:
        p, t = self.prompt_ids(example["input"]), self.target_ids(example["target"])
        if self.seq2seq:
            return {"input_ids": p, "labels": t}
        return {"input_ids": p + t, "labels": [IGNORE] * len(p) + t}

    def clean_output(self, text: str) -> str:
        """Cut a generated continuation at the first end-of-turn marker."""
        for stop in {self.end_text, "<|im_end|>", "<|endoftext|>"} - {""}:
            text = text.split(stop)[0]
        return text.strip()


class EncodedDataset(torch.utils.data.Dataset):
    def __init__(self, examples: list[dict], formatter: Formatter):
        self.items = [formatter.encode(e) for e in examples]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def lengths(self) -> list[int]:
        return [len(x["input_ids"]) for x in self.items]


@dataclass
class PadCollator:
    """Dynamic padding to the longest sequence of the batch (right padding for training). Labels
    are padded to their own longest row: as long as the ids for a causal LM, the target alone for
    an encoder-decoder model."""
    pad_token_id: int

    def __call__(self, batch: list[dict]) -> dict:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)  # (B, T)
        labels = torch.full((len(batch), max(len(b["labels"]) for b in batch)), IGNORE, dtype=torch.long)  # (B, T')
        mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :len(b["labels"])] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
