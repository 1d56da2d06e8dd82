"""Peak memory (RSS) of every built-in task's default run and of the app with every page visited, bundled model.

1. tuning: `python -m workbench tune --task T` with the task's full defaults (TuneConfig.for_task,
   core/tasks.py TASK_DEFAULTS), each task in its own process; its peak RSS (the process's own
   VmHWM, see `measured`), its wall time and where it passed the best hard prompt
   (core/evaluate/beat.py). Target: <= 2.5 GiB for every task.
2. app: every page rendered in turn in one process with Streamlit's AppTest, as the server process
   would hold them: Home, Tune, Sweep, Runs, Compare (the run's task, base model, generator, a
   comparison of a soft prompt, hard prompts and the bare model on 8 test inputs), Explore's four
   views in turn (Tree: vocabulary map and tree, built if not cached; Map; Neighbours: LSH forest;
   Meaning: 'Score and measure', i.e. the soft and projected prompts scored and every virtual token's
   importance measured on 32 validation examples), Results; its peak RSS. Target: <= 2.5 GiB.
   The app's run must be a finished prompt-tuning run. `--trace` prints the RSS and the peak so far
   after each page and view (kept in memory.json as app_pages either way). A comparison already
   stored in $WORKBENCH_HOME/comparisons is read back, not generated: clear it for the figure.
Runs go to $WORKBENCH_HOME when it is set (kept, for a look afterwards), else to a temporary folder.
`--tasks` picks tasks, `--steps N` cuts every run to N steps (a quick look, not the figure), `--no-app`.
Writes bench-results/memory.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_GIB = 2.5
TASKS = ("paraphrase", "summarisation", "qa", "translation", "sentiment")


def measured(cmd: list[str], env: dict | None = None) -> tuple[int, float, str]:
    """Run a command to its end: (exit code, its peak RSS in GiB, its stderr).

    The peak is the child's own VmHWM, read from /proc while it runs. Not rusage's ru_maxrss: the
    kernel starts an exec'd child's maxrss at its parent's high-water mark, so a child of a big
    process (bench/results.py holds the model) would report the parent's size."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
    reader.start()
    peak_kib = 0
    while proc.poll() is None:
        peak_kib = max(peak_kib, _vm_hwm_kib(proc.pid))
        time.sleep(0.1)
    reader.join()
    return proc.returncode, peak_kib / 2**20, "".join(err)


def _vm_hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):  # it has just ended
        pass
    return 0


def app_peak(script: Path, env: dict) -> tuple[float, list[dict]]:
    """The APP script's peak RSS (GiB) and its trace: per page (and Explore view), in visiting order, the
    process's RSS and high-water mark (MiB) once it was drawn, and the seconds it took."""
    code, peak, err = measured([sys.executable, str(script)], env)
    if code != 0:
        sys.exit(f"the app script failed ({code}): {err[-1500:]}")
    trace = []
    for line in err.splitlines():
        if line.startswith("TRACE\t"):
            name, rss, hwm, secs = line.split("\t")[1:]
            trace.append({"page": name, "rss_mib": float(rss), "hwm_mib": float(hwm), "seconds": float(secs)})
    return peak, trace


APP = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from streamlit.testing.v1 import AppTest

    def mib(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        return 0.0

    def page(name, state=None, click=()):
        t0 = time.perf_counter()
        at = AppTest.from_file({repo!r} + "/pages/" + name + ".py", default_timeout=1800)
        for k, v in (state or {{}}).items():
            at.session_state[k] = v
        at.run()
        for key in click:
            at.button(key=key).click().run()
        assert not at.exception, (name, at.exception)
        view = (state or {{}}).get("exp_view", "")
        print(f"TRACE\t{{name + (' ' + view if view else '')}}\t{{mib('VmRSS'):.0f}}\t{{mib('VmHWM'):.0f}}\t"
              f"{{time.perf_counter() - t0:.1f}}", file=sys.stderr, flush=True)
        return at

    for name in ("home", "tune", "sweep", "runs"):
        page(name)
    page("compare", {{"cmp_task": {task!r}, "cmp_runs": [{run!r}], "cmp_n": 8}}, click=["cmp_go"])
    explore = {{"exp_runs": [{run!r}]}}
    for view in ("Tree", "Map", "Neighbours"):
        page("explore", {{**explore, "exp_view": view}})
    at = page("explore", {{**explore, "exp_view": "Meaning"}}, click=["mean_go"])
    assert any(m.label.startswith("Waywardness") for m in at.metric), "Meaning: no scores after 'Score and measure'"
    page("results")
""")


def tune(task: str, env: dict, steps: int | None) -> dict:
    """The task's default run in its own process: peak RSS, wall time, when it passed the best hard prompt."""
    run_id = f"mem-{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [sys.executable, "-m", "workbench", "tune", "--task", task, "--run-id", run_id]
    t0 = time.time()
    code, peak, err = measured(cmd + (["--steps", str(steps)] if steps else []), env)
    if code != 0:
        sys.exit(f"{task} run failed ({code}): {err[-1500:]}")
    status = json.loads((Path(env["WORKBENCH_HOME"]) / "runs" / run_id / "status.json").read_text())
    beat = status.get("beat") or {}
    return {"run": run_id, "peak_rss_gib": round(peak, 3), "wall_s": round(time.time() - t0, 1),
            "steps": status.get("step"), "sec_per_step": status.get("sec_per_step"),
            "passed_hard": beat.get("passed"), "hard": beat.get("hard"), "beat_n": beat.get("n")}


def from_results(path: Path) -> dict:
    """The runs part from bench/results.py's rows: the same `workbench tune` child, measured by `measured`."""
    rows = json.loads(path.read_text())["rows"]
    out = {}
    for r in rows:
        beat = r.get("beat") or {}
        passed = {"step": beat["step"], "seconds": beat["seconds"]} if beat.get("step") is not None else None
        out[r["task"]] = {"run": r["run"], "peak_rss_gib": r["peak_rss_gib"], "wall_s": r["train_s"],
                          "steps": r["steps"], "passed_hard": passed, "hard": beat.get("hard"),
                          "beat_n": beat.get("n"), "source": path.name}
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="*", default=list(TASKS), choices=TASKS)
    p.add_argument("--steps", type=int, default=None, help="cut every run to N steps (default: the full run)")
    p.add_argument("--no-app", action="store_true", help="skip the app measurement")
    p.add_argument("--app-run", help="the run the app compares and explores (default: the last task's run)")
    p.add_argument("--trace", action="store_true", help="print the app's RSS after each page and Explore view")
    p.add_argument("--from-results", type=Path, metavar="JSON",
                   help="take the runs' figures from `make results` output (bench-results/results-test.json), which "
                        "trains each task's defaults in its own process measured the same way, instead of training again")
    a = p.parse_args(argv)
    if a.from_results:
        a.tasks = []
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, str(REPO))
        from core.store.paths import model_cache_dir
        home = os.environ.get("WORKBENCH_HOME") or tmp
        env = {**os.environ, "WORKBENCH_HOME": home, "PYTHONPATH": str(REPO),
               "WORKBENCH_MODEL_CACHE": str(model_cache_dir())}  # the converted model and map, not reconverted
        runs = from_results(a.from_results) if a.from_results else {}
        for task in a.tasks:
            runs[task] = r = tune(task, env, a.steps)
            passed = r["passed_hard"]
            print(f"{task}: peak RSS {r['peak_rss_gib']:.2f} GiB ({r['peak_rss_gib'] / TARGET_GIB:.2f}x the "
                  f"{TARGET_GIB} GiB target), {r['steps']} steps in {r['wall_s'] / 60:.1f} min, "
                  + (f"passed the best hard prompt at step {passed['step']}, {passed['seconds'] / 60:.1f} min"
                     if passed else "did not pass the best hard prompt"), flush=True)
        app, app_info = None, {}
        for task, r in runs.items() if a.from_results else ():
            print(f"{task}: peak RSS {r['peak_rss_gib']:.2f} GiB, {r['steps']} steps in {r['wall_s'] / 60:.1f} min "
                  f"(from {a.from_results.name})", flush=True)
        if not a.no_app and (runs or a.app_run):
            script = Path(tmp) / "app.py"
            app_run = a.app_run or list(runs.values())[-1]["run"]
            task = json.loads((Path(home) / "runs" / app_run / "config.json").read_text())["task"]
            script.write_text(APP.format(repo=str(REPO), run=app_run, task=task))
            app, trace = app_peak(script, env)
            app = round(app, 3)
            app_info = {"app_run": app_run, "app_pages": trace}
            if a.trace:
                print(f"{'page':<22}{'RSS MiB':>9}{'peak MiB':>10}{'s':>8}")
                for t in trace:
                    print(f"{t['page']:<22}{t['rss_mib']:>9.0f}{t['hwm_mib']:>10.0f}{t['seconds']:>8.1f}")
            print(f"app, every page visited (Compare with a comparison, Explore's four views): peak RSS {app:.2f} GiB",
                  flush=True)
    out = REPO / "bench-results" / "memory.json"
    out.parent.mkdir(exist_ok=True)
    before = json.loads(out.read_text()) if out.exists() else {}
    if "runs" in before and not a.from_results and (not runs or before.get("full_runs") == (a.steps is None)):  # a subset updates the rest
        runs = {**before["runs"], **runs}
        app = app if app is not None else before.get("app_peak_rss_gib")
    full = a.steps is None if a.tasks or a.from_results else before.get("full_runs")
    res = {**before, "runs": runs, "app_peak_rss_gib": app, "target_gib": TARGET_GIB, "full_runs": full,  # notes stay
           "max_tune_peak_rss_gib": max((r["peak_rss_gib"] for r in runs.values()), default=None), **app_info}
    out.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
