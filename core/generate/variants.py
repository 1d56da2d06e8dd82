"""Format variants: meaning-preserving rewrites of task inputs, to measure how much a prompt leans
on the exact surface form of its training data (line breaks, field names, casing, spacing, ...).

Each transform is plain code over the input text, seeded, and works on any user's data, not just
the built-in tasks. Targets are never changed. A transform that would make the reference invalid
(for qa: the answer no longer written in the input as it was) is applied around the reference's
spans instead, or not at all for that example.

    variants(examples, names, seed)  one shifted copy of the examples per transform
    shifted(examples, seed)          one copy where each example gets one random transform
    augment(examples, share, seed, rounds)  the examples plus a shifted copy of a share of them, drawn
                                     afresh for each pass a run makes (training)
    applicable(examples)             the transforms that change at least one example
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable

from core.errors import WorkbenchError

# Field labels and their short forms ("Question:" <-> "Q:"); any capitalised word before a colon at
# the start of a line counts as a label when the input has two or more of them.
SHORT = {"Question": "Q", "Context": "C", "Answer": "A", "Passage": "P", "Review": "R", "Sentence": "S",
         "Text": "T", "Document": "D", "Hypothesis": "H", "Input": "I"}
FULL = {"Q": "Question", "C": "Context", "A": "Answer", "R": "Review", "S": "Sentence", "D": "Document"}
_KNOWN = "|".join(sorted(set(SHORT) | set(FULL), key=len, reverse=True))
_LINE_LABEL = re.compile(r"(?m)^(?P<name>[A-Z][A-Za-z]{0,19}):[ \t]*")
_INLINE_LABEL = re.compile(rf"(?<=[.!?\"'”]) (?=(?:{_KNOWN}):)")
PREFACES = ("Here is the text:", "The text follows.", "Read the following.", "Consider this input:")
QUOTES = (('"', '"'), ("'", "'"), ("“", "”"))


@dataclass(frozen=True)
class Transform:
    name: str
    description: str
    apply: Callable[[str, random.Random], str]  # input text, seeded rng -> rewritten input text


def _labels(text: str) -> list[re.Match]:
    """Field labels at line starts: every one when there are two or more, else only known names."""
    found = list(_LINE_LABEL.finditer(text))
    return found if len(found) >= 2 else [m for m in found if m["name"] in SHORT or m["name"] in FULL]


def line_breaks(text: str, rng: random.Random) -> str:
    """Line breaks between fields become single spaces; fields written on one line get a line each."""
    core = text.strip()
    if "\n" in core:
        lead, trail = text[:len(text) - len(text.lstrip())], text[len(text.rstrip()):]
        return lead + re.sub(r"[ \t]*\n\s*", " ", core) + trail
    return _INLINE_LABEL.sub("\n", text)


def field_names(text: str, rng: random.Random) -> str:
    """Field labels change form: full name <-> short form (Question: <-> Q:), or are dropped."""
    found = _labels(text)
    if not found:
        return text
    style = rng.choice(["other", "none"])
    def relabel(m: re.Match) -> str:
        if style == "none":
            return ""
        name = m["name"]
        other = SHORT.get(name) or FULL.get(name) or name[0]
        return m.group(0).replace(name, other, 1)
    spans = {m.start() for m in found}
    return _LINE_LABEL.sub(lambda m: relabel(m) if m.start() in spans else m.group(0), text)


def casing(text: str, rng: random.Random) -> str:
    """Text with capitals is lowercased; all-lowercase text gets a capital at each sentence start."""
    if any(c.isupper() for c in text):
        return text.lower()
    return re.sub(r"(^[^A-Za-z]*|[.!?]\s+|\n\s*)([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)


_TOKENISED = re.compile(r"\w ([,.!?;:%)])(?=\s|$)|\( \w")


def punct_spacing(text: str, rng: random.Random) -> str:
    """Tokenised punctuation is attached (`film , and` -> `film, and`), attached punctuation is
    tokenised (`film, and` -> `film , and`); colons after field labels stay as they are."""
    if _TOKENISED.search(text):
        return re.sub(r"\( +", "(", re.sub(r"(?<=[\w)\]]) +([,.!?;:%)])(?=\s|$)", r"\1", text))
    return re.sub(r"(?<=\w)([,.!?;])(?=\s|$)", r" \1", text)


def surrounding_whitespace(text: str, rng: random.Random) -> str:
    """Spaces / line breaks are added around the input (or removed, when it has some)."""
    if text != text.strip():
        return text.strip()
    return rng.choice([" ", "  ", "\n", "\t"]) + text + rng.choice([" ", "\n", "  \n"])


def quotes(text: str, rng: random.Random) -> str:
    """The input (each field's value, when it has fields) is put in quotes; quoted input is unquoted."""
    for left, right in QUOTES:
        if len(text) > 1 and text[0] == left and text[-1] == right and left not in text[1:-1]:
            return text[1:-1]
    left, right = rng.choice([q for q in QUOTES if q[0] not in text] or [QUOTES[2]])
    starts = {m.end() for m in _labels(text)}
    if not starts:
        return f"{left}{text}{right}"
    out, lines, pos = [], text.split("\n"), 0
    for line in lines:
        cut = next((s - pos for s in starts if pos <= s <= pos + len(line)), None)
        out.append(line if cut is None or cut == len(line) else f"{line[:cut]}{left}{line[cut:]}{right}")
        pos += len(line) + 1
    return "\n".join(out)


def preface(text: str, rng: random.Random) -> str:
    """A short neutral preface is written in front ("Here is the text:"), on its own line or not."""
    return rng.choice(PREFACES) + rng.choice([" ", "\n"]) + text


TRANSFORMS: dict[str, Transform] = {t.name: t for t in [
    Transform("line_breaks", "line breaks between fields become spaces (fields on one line get a line each)",
              line_breaks),
    Transform("field_names", "field labels change form (Question: -> Q:, Q: -> Question:) or are dropped",
              field_names),
    Transform("casing", "text with capitals is lowercased; lowercase text is capitalised at sentence starts",
              casing),
    Transform("punct_spacing", "tokenised punctuation is attached (film , and -> film, and) and vice versa",
              punct_spacing),
    Transform("whitespace", "spaces or line breaks are added around the input (removed when present)",
              surrounding_whitespace),
    Transform("quotes", "the input (or each field's value) is put in quotes (removed when quoted)", quotes),
    Transform("preface", "a short neutral preface such as 'Here is the text:' is written in front", preface),
]}
SHIFTED = "shifted"  # the mixed variant: one random transform per example
_HOLD = "\ue000"  # stands for the target while a transform runs: no letter, no space, no punctuation


def transform_input(example: dict, name: str, seed: int = 0) -> str:
    """The example's input under one transform, seeded by (seed, name, input). When the target is
    written in the input (a qa answer), it still is afterwards, exactly: its occurrences are held
    out of the transform (or, should it still lose them, the input is kept as is)."""
    text, target = example["input"], example.get("target", "")
    rng = random.Random(f"{seed}|{name}|{text}")
    if not target or target not in text or _HOLD in text:
        return TRANSFORMS[name].apply(text, rng)
    out = TRANSFORMS[name].apply(text.replace(target, _HOLD), rng)
    return out.replace(_HOLD, target) if out.count(_HOLD) == text.count(target) else text


def _check(names) -> list[str]:
    unknown = [n for n in names if n not in TRANSFORMS]
    if unknown:
        raise WorkbenchError(f"Unknown format variant(s) {unknown}: use {', '.join(TRANSFORMS)}.")
    return list(names)


def variants(examples: list[dict], names: list[str] | None = None, seed: int = 0) -> dict[str, list[dict]]:
    """One copy of `examples` per transform (all of them by default), inputs rewritten, targets and
    any other keys as they were."""
    return {n: [{**x, "input": transform_input(x, n, seed)} for x in examples]
            for n in _check(names or list(TRANSFORMS))}


def applicable(examples: list[dict], seed: int = 0) -> list[str]:
    """The transforms (registry order) that change at least one of `examples`."""
    return [n for n in TRANSFORMS if any(transform_input(x, n, seed) != x["input"] for x in examples)]


def shifted(examples: list[dict], seed: int = 0) -> list[dict]:
    """The "shifted" split: each example through one transform drawn (seeded) among those that
    change it; an example no transform changes stays as it is."""
    out = []
    for x in examples:
        options = {n: y for n in TRANSFORMS if (y := transform_input(x, n, seed)) != x["input"]}
        pick = random.Random(f"{seed}|{SHIFTED}|{x['input']}").choice(sorted(options)) if options else None
        out.append({**x, "input": options[pick]} if pick else dict(x))
    return out


def augment(examples: list[dict], share: float, seed: int = 0, rounds: int = 1) -> list[dict]:
    """Training data for a prompt that should hold up off its training layout: every example as it
    is, plus a copy in a random format variant (as in `shifted`) for a seeded `share` of them.

    rounds > 1 repeats this once per pass the run makes over the data, each round with its own draw
    of examples and variants, so over a run an example is seen in several layouts rather than in
    the one it drew (the sampler shuffles all rounds together; the data stay fixed, so a resumed
    run sees what it would have seen)."""
    if not 0 <= share <= 1:
        raise WorkbenchError(f"The augmentation share {share!r} is not between 0 and 1.")
    out: list[dict] = []
    for r in range(max(1, rounds)):
        key = f"{seed}|augment" if r == 0 else f"{seed}|augment|{r}"  # round 0 as before
        rng = random.Random(key)
        picked = [x for x in examples if rng.random() < share]
        draw = seed if r == 0 else f"{seed}|{r}"
        out += list(examples) + [y for x, y in zip(picked, shifted(picked, draw)) if y["input"] != x["input"]]
    return out


MAX_ROUNDS = 32  # a small dataset on a long run: past this the layouts repeat anyway, and memory stays bounded


def passes(n_examples: int, share: float, steps: int, batch_size: int) -> int:
    """How many passes over the augmented data a run of `steps` batches makes (1 to MAX_ROUNDS)."""
    per_pass = max(1, round(n_examples * (1 + share)))
    return min(MAX_ROUNDS, max(1, -(-steps * batch_size // per_pass)))
