"""Peak memory (RSS) of a default tuning run and of the app with the model loaded, bundled model.

1. tuning: `python -m workbench tune --task paraphrase` with the task's defaults (steps cut to 30:
   the peak is reached in the first steps and evaluations), in its own process; its peak RSS (the
   process's own VmHWM, see `measured`). Target: <= 2.5 GiB.
2. app: the Compare page (base model, generator, a comparison of the soft prompt, hard prompts
   and the bare model on 8 test inputs) and the Explore page (vocabulary map and index) rendered
   one after the other in one process with Streamlit's AppTest, as the server process would hold
   them; its peak RSS.
Writes bench-results/memory.json.
"""
from __future__ import annotations

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


def peak_of(cmd: list[str], env: dict) -> float:
    code, peak, err = measured(cmd, env)
    if code != 0:
        sys.exit(f"{' '.join(cmd[:4])} failed ({code}): {err[-1500:]}")
    return peak


APP = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file({repo!r} + "/pages/compare.py", default_timeout=900)
    at.session_state["cmp_runs"] = [{run!r}]
    at.session_state["cmp_n"] = 8
    at.run()
    at.button(key="cmp_go").click().run()
    assert not at.exception, at.exception
    ex = AppTest.from_file({repo!r} + "/pages/explore.py", default_timeout=900)
    ex.session_state["exp_runs"] = [{run!r}]
    ex.run()
    assert not ex.exception, ex.exception
""")


def main() -> dict:
    with tempfile.TemporaryDirectory() as home:
        sys.path.insert(0, str(REPO))
        from core.store.paths import model_cache_dir
        env = {**os.environ, "WORKBENCH_HOME": home, "PYTHONPATH": str(REPO),
               "WORKBENCH_MODEL_CACHE": str(model_cache_dir())}  # the converted model and map, not reconverted
        tune = peak_of([sys.executable, "-m", "workbench", "tune", "--task", "paraphrase", "--steps", "30",
                           "--eval-every", "15", "--run-id", "mem"], env)
        print(f"default tuning run (paraphrase defaults, 30 steps): peak RSS {tune:.2f} GiB "
              f"({tune / TARGET_GIB:.2f}x the {TARGET_GIB} GiB target)", flush=True)
        script = Path(home) / "app.py"
        script.write_text(APP.format(repo=str(REPO), run="mem"))
        app = peak_of([sys.executable, str(script)], env)
        print(f"app with the model loaded (Compare + Explore pages): peak RSS {app:.2f} GiB", flush=True)
    res = {"tune_peak_rss_gib": round(tune, 3), "app_peak_rss_gib": round(app, 3), "target_gib": TARGET_GIB,
           "tune_ratio_to_target": round(tune / TARGET_GIB, 3)}
    out = REPO / "bench-results" / "memory.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
