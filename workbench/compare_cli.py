"""`python -m workbench compare`: the Compare page's comparison from a terminal.

Its flags are generated from CompareOptions (core/evaluate/compare_options.py), the settings of the
page's form, so both offer the same choices with the same defaults and the same checks. It prints
the metric table (mean [95% interval] per system), the paired-test sentence and matrix on the main
metric, optionally the robustness table, and writes the comparison as JSON and CSV to --out.
Results are stored like the page's (workspace/comparisons, keyed by systems, inputs and decoding),
so the same comparison is computed once, whichever of the two asks first.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from core.config import ConfigError
from core.errors import WorkbenchError
from core.evaluate.compare_options import CompareOptions


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{s!r} is not true/false")


def flag_of(name: str) -> str:
    """The command-line flag of a CompareOptions field (`runs` -> --run, `n` -> -n)."""
    f = next((f for f in dataclasses.fields(CompareOptions) if f.name == name), None)
    flag = f.metadata.get("flag", name) if f else name
    return f"-{flag}" if len(flag) == 1 else f"--{flag.replace('_', '-')}"


def add_compare_flags(p: argparse.ArgumentParser) -> None:
    defaults = CompareOptions()
    for f in dataclasses.fields(CompareOptions):
        meta, default = f.metadata, getattr(defaults, f.name)
        kw = {"dest": f.name, "default": argparse.SUPPRESS,
              "help": meta.get("help", "") + ("" if default is None or isinstance(default, list)
                                              else f" (default: {default})")}
        if isinstance(default, list):
            kw["action"] = "append"
        elif meta.get("kind", type(default)) is bool:
            kw.update(type=_bool, nargs="?", const=True, metavar="true|false")
        else:
            kw["type"] = meta.get("kind", type(default))
        if "choices" in meta:
            kw["metavar"] = "|".join(meta["choices"])
        elif "metavar" not in kw:
            kw["metavar"] = meta.get("metavar", meta.get("flag", f.name).upper())
        p.add_argument(flag_of(f.name), **kw)


def add_parser(sub) -> None:
    cmp = sub.add_parser("compare", help="the Compare page from a terminal: soft prompts, hard prompts and the bare "
                                         "model on the same inputs, scored, with paired tests")
    add_compare_flags(cmp)
    cmp.add_argument("--out", help="folder to write comparison-<key>.json and .csv into (and robustness-<key>.json "
                                   "with --variants)")


def options(a: argparse.Namespace) -> CompareOptions:
    values = {f.name: getattr(a, f.name) for f in dataclasses.fields(CompareOptions) if hasattr(a, f.name)}
    try:
        return CompareOptions.from_dict(values)
    except ConfigError as e:  # name the flags the user typed
        raise ConfigError({flag_of(k).lstrip("-"): v for k, v in e.errors.items()}) from None


def compare_inputs(opts: CompareOptions, task) -> list[dict]:
    """The inputs as the page picks them: typed, from a data file (columns guessed) or a split's first n."""
    from core.tasks import guess_columns, load_records, peek

    if opts.inputs:
        return [{"input": x.strip(), "target": ""} for x in opts.inputs if x.strip()]
    if opts.data_path:
        columns, _ = peek(Path(opts.data_path).expanduser())
        guess_in, guess_ref = guess_columns(columns)
        col_in, col_ref = opts.input_column or guess_in, opts.target_column or guess_ref
        if col_in == col_ref:
            raise WorkbenchError(f"Reference column {col_ref!r}: the same column as the input, so every metric would "
                                 "score the input against itself. Pick the column with the expected output "
                                 "(--target-column).")
        return load_records(opts.data_path, col_in, col_ref)
    return task.split(opts.split)[:opts.n]


def cmd_compare(a: argparse.Namespace) -> int:
    opts = options(a)
    from core.evaluate.compare import CompareSpec, hard_systems, soft_system
    from core.evaluate.robustness import NEEDS_REFERENCES
    from core.generate.generator import Decoding
    from core.model.loading import DEFAULT_MODEL
    from core.store.runs import Run
    from core.tasks import load_task

    task = load_task(opts.task)
    inputs = compare_inputs(opts, task)
    model = opts.model or (Run.open(opts.runs[0]).config().model if opts.runs else DEFAULT_MODEL)
    systems = [soft_system(r, model) for r in opts.runs] + hard_systems(task, opts.prompt_format, opts.shots,
                                                                        opts.template)
    one_line = opts.stop_at_newline if opts.stop_at_newline is not None else \
        bool(inputs) and not any("\n" in x.get("target", "").strip() for x in inputs)
    decoding = Decoding(opts.max_new_tokens, opts.temperature, opts.top_p, opts.seed, one_line)
    spec = CompareSpec(inputs, systems, decoding, task.spec.kind, task.spec.labels, task.spec.main_metric)
    if opts.variants and not all(x.get("target") for x in inputs):
        raise WorkbenchError(NEEDS_REFERENCES)
    out = _out_folder(a.out) if a.out else None  # before the work, not after it
    try:
        result, robust = _run(spec, model, opts.variants)
    except WorkbenchError:
        raise
    except Exception as e:  # a failure while generating or scoring, not a bad flag: a message, not a traceback
        print(f"error: the comparison failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    source = "typed inputs" if opts.inputs else Path(opts.data_path).name if opts.data_path else \
        f"{task.spec.name} {opts.split}"
    print(f"{source}, {len(result['inputs'])} inputs x {len(result['systems'])} systems on {model}, "
          f"generated in {result['seconds']:.1f} s; decoding: {result['decoding']}")
    print_metrics(result)
    if robust:
        print(f"\nrobustness: {robust['metric']} on format variants of the inputs")
        print_robustness(robust)
    if out:
        write_files(result, robust, out)
    return 0


def _out_folder(folder: str) -> Path:
    out = Path(folder).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkbenchError(f"Cannot write the results to {folder!r}: {e.strerror or e}. "
                             "Pick a folder you can write to with --out.") from None
    return out


def _run(spec, model: str, variants: int) -> tuple[dict, dict | None]:
    from core.evaluate.compare import run_comparison
    from core.evaluate.robustness import run_robustness
    from core.evaluate.similarity import SentenceEmbedder
    from core.generate.generator import Generator
    from core.model.loading import load_model

    def progress(f: float, msg: str) -> None:
        print(f"{f:4.0%} {msg}", file=sys.stderr, flush=True)
    lm = load_model(model)
    gen = Generator(lm.model, lm.tokenizer)
    embedder = SentenceEmbedder() if spec.inputs and all(x["target"] for x in spec.inputs) else None
    result = run_comparison(gen, spec, model, embedder, progress=progress)
    robust = run_robustness(gen, spec, model, variants, progress=progress) if variants else None
    return result, robust


def print_metrics(result: dict) -> None:
    """Mean [low, high] per metric and system (the main metric first), then the paired tests."""
    from core.evaluate.compare import table_rows

    if not result["summary"]:
        print("These inputs have no references: outputs only, no metrics.")
        for row in table_rows(result):
            print(f"\n> {row['input']}")
            for s in result["systems"]:
                print(f"  {s['name']}: {row[s['name']] or '(empty)'}")
        return
    main = result["main_metric"]
    metrics = sorted(dict.fromkeys(r["metric"] for r in result["summary"]), key=lambda m: m != main)
    rows = [r for m in metrics for r in result["summary"] if r["metric"] == m]  # systems keep their order
    width = max(len(s["name"]) for s in result["systems"]) + 2
    print("\nmean over inputs [95% bootstrap interval]")
    print(f"{'metric':<20}{'system':<{width}}mean")
    last = None
    for r in rows:
        print(f"{r['metric'] if r['metric'] != last else '':<20}{r['system']:<{width}}"
              f"{r['mean']:.3f} [{r['low']:.3f}, {r['high']:.3f}]")
        last = r["metric"]
    print_paired(result)


def print_paired(result: dict) -> None:
    from core.evaluate.paired import focus_pair, pair_cell, pair_matrix, pair_row, pair_sentence, paired_metrics

    metrics = paired_metrics(result)
    if not metrics or len(result["systems"]) < 2:
        return
    metric = result["main_metric"] if result["main_metric"] in metrics else metrics[0]
    rows = pair_matrix(result, metric)
    names = [s["name"] for s in result["systems"]]
    print(f"\npaired tests on {metric}")
    if focus := focus_pair(result, metric):
        print(pair_sentence(pair_row(rows, *focus), metric))
    print("cell: row minus column, 95% paired bootstrap interval, p-value")
    for i, n in enumerate(names, 1):
        print(f"  [{i}] {n}")
    cells = {(r["a"], r["b"]): pair_cell(r) for r in rows}
    width = max(len(c) for c in cells.values()) + 2
    print(("     " + "".join(f"{f'[{j}]':<{width}}" for j in range(1, len(names) + 1))).rstrip())
    for i, a in enumerate(names, 1):
        print(f"{f'[{i}]':<5}" + "".join(f"{cells.get((a, b), '-'):<{width}}" for b in names).rstrip())


def print_robustness(r: dict) -> None:
    """Per system: the main metric on the inputs and on each format variant, and the spread."""
    from core.evaluate.robustness import robustness_rows

    rows = robustness_rows(r)
    for v in r["variants"]:
        print(f"  {v:<14} {r['descriptions'][v]}")
    cols = list(rows[0])
    print("  ".join(f"{c:<22}" if c == "system" else f"{c[:13]:>13}" for c in cols))
    for row in rows:
        print("  ".join(f"{row[c]:<22}" if c == "system" else f"{row[c]:>13.3f}" if isinstance(row[c], float)
                        else f"{str(row[c])[:13]:>13}" for c in cols))


def write_files(result: dict, robust: dict | None, out: Path) -> None:
    import json

    from core.evaluate.compare import to_csv, to_json

    try:
        files = {out / f"comparison-{result['key']}.json": to_json(result),
                 out / f"comparison-{result['key']}.csv": to_csv(result)}
        if robust:
            files[out / f"robustness-{result['key']}.json"] = json.dumps(robust, indent=2, ensure_ascii=False)
        for path, text in files.items():
            path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise WorkbenchError(f"Cannot write the results to {str(out)!r}: {e.strerror or e}. "
                             "Pick a folder you can write to with --out.") from None
    print(f"\nwrote {', '.join(str(p) for p in files)}")
