"""The main flow in a real browser: Debian's chromium driven by Playwright against the running app.

Start a short run on Tune, watch it reach `completed`, open Compare and see the soft prompt's
column and metrics, open Explore and see the tree and map, open Results and see the report; on a small
tree, find a run's tokens and a searched word. Screenshots go to
test-artifacts/
"""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import REPO

expect = pytest.importorskip("playwright.sync_api").expect  # its checks retry until the page has drawn them
expect.set_options(timeout=30_000)  # a rerun on a loaded machine: seconds, not Playwright's default 5

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(tmp_path, **env):
    """Start the app on a free port with WORKBENCH_HOME in tmp_path (plus env); yield its URL, then stop it."""
    port = free_port()
    env = {**os.environ, "WORKBENCH_HOME": str(tmp_path / "ws"), "PYTHONUNBUFFERED": "1", **env}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "workbench/app.py", "--server.port",
                             str(port), "--server.headless", "true"], cwd=REPO, env=env,
                            stdout=open(tmp_path / "app.log", "wb"), stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=20)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(tmp_path / "app.log", ARTIFACTS / "app.log")


@pytest.fixture
def app(tmp_path):
    yield from serve(tmp_path)


@pytest.fixture
def small_app(tmp_path):
    """The app with the vocabulary map and tree cut to the first 2,000 tokens, cached in a model cache of
    its own (the bundled model and kernels linked in, not copied)."""
    from core.store.paths import model_cache_dir
    cache = tmp_path / "models"
    cache.mkdir()
    for entry in model_cache_dir().iterdir():
        if entry.name not in ("vocab_maps", "vocab_trees"):
            (cache / entry.name).symlink_to(entry)
    env = {"WORKBENCH_MODEL_CACHE": str(cache), "WORKBENCH_MAP_TOKENS": "2000", "WORKBENCH_MAP_EPOCHS": "20"}
    yield from serve(tmp_path, **env)


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-sync"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1600})
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


def eventually(check, failure, seconds: float = 20) -> None:
    """Wait until check() holds (a page draws what a rerun changed some time after the click); else fail
    with failure(), read then."""
    end = time.time() + seconds
    while not check():
        assert time.time() < end, failure()
        time.sleep(0.25)


def fill(pg, label: str, value) -> None:
    box = pg.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    pg.wait_for_timeout(400)


def test_tune_then_compare_in_a_real_browser(app, page):
    pg = page
    pg.goto(f"{app}/tune")
    pg.get_by_text("Tune a soft prompt").wait_for()
    pg.get_by_text("Training settings").click()
    for label, value in [("Max steps", 3), ("Batch size", 2), ("Eval every", 3), ("Save every", 3),
                         ("Eval examples", 2), ("Max target tokens", 8)]:
        fill(pg, label, value)
    fill(pg, "Virtual tokens", 4)
    pg.screenshot(path=str(ARTIFACTS / "1-tune-form.png"), full_page=True)
    pg.get_by_role("button", name="Start").click()
    pg.get_by_text("Started run").wait_for()
    # with the task's defaults the run also scores the best hard prompt once on 16 validation examples
    # (the time-to-beat sample): a minute or more on 2 cores, on top of the 3 steps
    pg.get_by_text("state completed").wait_for(timeout=600_000)
    pg.screenshot(path=str(ARTIFACTS / "2-tune-completed.png"), full_page=True)

    pg.goto(f"{app}/compare")
    pg.get_by_text("Compare soft and hard prompts").wait_for()
    fill(pg, "Max new tokens", 6)
    pg.get_by_role("slider", name="How many").focus()
    for _ in range(21):  # 24 -> 3 test inputs
        pg.keyboard.press("ArrowLeft")
    pg.wait_for_timeout(500)
    pg.get_by_role("button", name="Compare").click()
    pg.get_by_text("Mean over inputs").wait_for(timeout=300_000)
    chart = pg.locator(".js-plotly-plot").first
    for name in ("soft: ", "hard: default", "hard: 3-shot", "bare model"):  # the bar chart's axis names every
        expect(chart).to_contain_text(name)  # system (the tables draw on canvas)
    pg.screenshot(path=str(ARTIFACTS / "3-compare.png"), full_page=True)

    pg.goto(f"{app}/explore")  # the first visit builds the vocabulary map and tree (about a minute), then cached
    pg.get_by_text("A fixed UMAP map").wait_for(timeout=480_000)
    pg.get_by_text("The minimum spanning tree").wait_for(timeout=300_000)  # then the tree (the first tab)
    pg.locator(".js-plotly-plot").first.wait_for()
    expect(pg.locator("body")).to_contain_text("49,152 input embeddings")
    pg.screenshot(path=str(ARTIFACTS / "4-explore.png"), full_page=True)

    pg.goto(f"{app}/results")  # the shipped results table and length x init report
    pg.get_by_text("Soft prompt against hard prompts").wait_for()
    chart = pg.locator(".js-plotly-plot").first
    for init in ("random", "sample-vocab", "text", "class-label"):
        expect(chart).to_contain_text(init)  # the legend
    expect(pg.locator("body")).to_contain_text("Soft prompt ahead on")
    pg.screenshot(path=str(ARTIFACTS / "5-results.png"), full_page=True)


def pick(pg, label: str, option: str) -> None:
    """Choose an option of the selectbox labelled `label` (type to filter, Enter to take it)."""
    pg.locator("[data-testid=stSelectbox]").filter(has_text=label).locator("input").click()
    pg.keyboard.type(option)
    pg.keyboard.press("Enter")
    pg.wait_for_timeout(1500)


def test_a_new_users_own_file_and_task_switch_in_a_real_browser(app, page, tmp_path):
    """The paths a new user takes first: own CSV on Tune -> Start -> completed; Compare follows a task
    switch with that task's run; an own file on Compare is scored against its answer column."""
    pg = page
    env = {**os.environ, "WORKBENCH_HOME": str(tmp_path / "ws")}
    qa_run = subprocess.Popen([sys.executable, "-m", "workbench", "tune", "--task", "qa", "--max-steps", "1",
                               "--virtual-tokens", "2", "--batch-size", "2", "--eval-every", "1",
                               "--save-every", "1", "--eval-examples", "1", "--beat-examples", "0"], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    csv = tmp_path / "trivia.csv"
    csv.write_text("question,answer\n" + "".join(f"What is {a} plus {b}?,{a + b}\n" for a in range(4) for b in range(4)))

    pg.goto(f"{app}/tune")
    pg.get_by_text("Tune a soft prompt").wait_for()
    pg.get_by_text("Training settings").wait_for()  # the form as a user first sees it, then Data -> My file
    pg.get_by_text("My file").click()
    pg.get_by_text("Upload a file with one example").wait_for()
    pg.locator("input[type=file]").set_input_files(str(csv))
    pg.get_by_text("Target column").wait_for()
    expect(pg.get_by_label("Virtual tokens", exact=True)).to_have_value("20")  # general defaults
    expect(pg.get_by_label("Input template", exact=True)).to_have_value("{input}")  # not blanks
    pg.get_by_text("Training settings").click()
    for label, value in [("Max steps", 3), ("Batch size", 2), ("Eval every", 3), ("Save every", 3),
                         ("Eval examples", 2), ("Max target tokens", 8)]:
        fill(pg, label, value)
    pg.screenshot(path=str(ARTIFACTS / "6-tune-own-file.png"), full_page=True)
    pg.get_by_role("button", name="Start").click()
    pg.get_by_text("Started run").wait_for()
    # the user's own run (task "trivia"); the CLI's qa run may show as completed beside it
    pg.get_by_text("state completed").filter(has_text="trivia").wait_for(timeout=240_000)
    pg.screenshot(path=str(ARTIFACTS / "7-tune-own-file-completed.png"), full_page=True)
    assert qa_run.wait(timeout=240) == 0

    pg.goto(f"{app}/compare")
    pg.get_by_text("Compare soft and hard prompts").wait_for()
    pg.wait_for_timeout(1500)
    systems = pg.locator("[data-testid=stMultiSelect]").filter(has_text="Soft prompts")
    assert "qa-prompt-tuning" not in systems.inner_text()  # paraphrase has no run: none picked
    pick(pg, "Task", "qa")
    expect(systems).to_contain_text("qa-prompt-tuning")  # the task's own run follows the switch
    assert "trivia" not in systems.inner_text()
    pg.screenshot(path=str(ARTIFACTS / "8-compare-task-switch.png"), full_page=True)

    pg.get_by_text("a file").click()
    pg.locator("[data-testid=stSidebar] input[type=file]").set_input_files(str(csv))
    pg.get_by_text("Reference column").wait_for()
    ref = pg.locator("[data-testid=stSelectbox]").filter(has_text="Reference column").locator("input")
    shown = lambda: ref.input_value() + (ref.get_attribute("aria-label") or "")  # noqa: E731
    eventually(lambda: "answer" in shown(), lambda: f"the reference column shows {shown()!r}, not the answer column")
    fill(pg, "Max new tokens", 4)
    pg.get_by_role("button", name="Compare").click()
    pg.get_by_text("Mean over inputs").wait_for(timeout=300_000)
    pg.locator(".js-plotly-plot").first.wait_for()
    assert "16 inputs" in pg.inner_text("body")
    pg.screenshot(path=str(ARTIFACTS / "9-compare-own-file.png"), full_page=True)

    pg.get_by_role("tab", name="Blind rating").click()  # a blind vote, by keyboard, then the ranking
    prompt = pg.get_by_text("Which answer is better?")
    prompt.wait_for(timeout=120_000)  # the tab draws after a rerun: slow on a loaded machine
    pg.get_by_role("button", name="Both bad").wait_for()  # the buttons carry the key shortcuts: drawn last
    pg.wait_for_timeout(1000)
    prompt.click()  # focus on the page, not in a text field: the keys vote
    pg.keyboard.press("a")
    pg.get_by_text("Ranking").wait_for(timeout=120_000)
    assert "from 1 votes" in pg.inner_text("body")
    pg.screenshot(path=str(ARTIFACTS / "10-blind-rating.png"), full_page=True)


TRACES = "() => document.querySelector('.js-plotly-plot')._fullData.map(t => [t.name, t.x.length])"  # decoded arrays


def test_explore_tree_shows_a_runs_tokens_and_finds_a_word(small_app, page, tmp_path):
    """The Tree is the first view on Explore: the run's virtual tokens are drawn on it (2,000-token tree),
    and the sidebar's "Find a word" marks the word's tokens on it."""
    pg = page
    env = {**os.environ, "WORKBENCH_HOME": str(tmp_path / "ws")}
    subprocess.run([sys.executable, "-m", "workbench", "tune", "--task", "sentiment", "--max-steps", "1",
                    "--virtual-tokens", "3", "--batch-size", "2", "--eval-every", "1", "--save-every", "1",
                    "--eval-examples", "1", "--beat-examples", "0"], cwd=REPO, env=env, check=True, capture_output=True,
                   timeout=300)
    pg.goto(f"{small_app}/explore")
    pg.get_by_text("The minimum spanning tree").wait_for(timeout=300_000)
    pg.locator(".js-plotly-plot").first.wait_for()
    expect(pg.get_by_role("tab", name="Tree")).to_have_attribute("aria-selected", "true")
    pg.wait_for_function(f"({TRACES})().length >= 3")  # vocabulary, tree, the run's tokens
    shown = dict(pg.evaluate(TRACES))
    assert shown["vocabulary (2,000 tokens)"] == 2000 and shown["tree (1,999 edges)"] == 3 * 1999
    run = next(name for name in shown if name.endswith("-sentiment-prompt-tuning"))
    assert shown[run] == 3  # the run's virtual tokens, each hanging off its nearest token
    fill(pg, "Find a word", "good")
    pg.get_by_text("'good': ").wait_for(timeout=60_000)
    pg.wait_for_function(f"({TRACES})().some(t => t[0] === 'search: good')")
    shown = dict(pg.evaluate(TRACES))
    assert shown.get("search: good", 0) >= 1 and shown[run] == 3
    pg.screenshot(path=str(ARTIFACTS / "11-explore-tree.png"), full_page=True)
