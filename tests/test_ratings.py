"""Blind pairwise rating: votes kept with the comparison, Bradley-Terry ranking, position bias."""
import json
import subprocess
import sys

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.errors import WorkbenchError
from core.evaluate.ratings import bradley_terry, load_votes, next_pair, rating_summary, record_vote, votes_path
from core.store.paths import workspace
from tests.conftest import REPO

NAMES = ["soft: a", "hard: default", "bare model"]


def stored_result(key="abc123"):
    result = {"key": key, "systems": [{"name": n} for n in NAMES], "main_metric": "token_f1", "summary": [],
              "inputs": [{"input": f"q{i}", "target": f"t{i}"} for i in range(3)],
              "outputs": {n: [f"{n} says {i}" for i in range(3)] for n in NAMES}, "seconds": 1.0,
              "decoding": {}, "scores": {}, "kind": "qa", "model": "m", "created": 0.0}
    path = workspace() / "comparisons" / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result


def test_votes_survive_a_restart(home):
    record_vote("abc123", 0, "soft: a", "bare model", "left")
    record_vote("abc123", 1, "bare model", "soft: a", "tie")
    with pytest.raises(WorkbenchError, match="'maybe' is not one of left, right, tie, both_bad"):
        record_vote("abc123", 1, "soft: a", "bare model", "maybe")
    code = "from core.evaluate.ratings import load_votes; print(len(load_votes('abc123')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"WORKBENCH_HOME": str(home), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "2" and votes_path("abc123").parent == home / "comparisons"


def test_bradley_terry_on_a_hand_checked_case():
    w = np.array([[0, 8, 9], [2, 0, 7], [1, 3, 0]], dtype=float)  # a beats b 8-2, b beats c 7-3, a beats c 9-1
    p = bradley_terry(w)
    assert p[0] > p[1] > p[2] and abs(p.sum() - 1) < 1e-9
    two = bradley_terry(np.array([[0, 8], [2, 0]], dtype=float))
    assert two[0] / two[1] == pytest.approx(8.1 / 2.1, rel=1e-6)  # the MLE p_a / p_b = wins ratio (0.1 prior each)


def test_summary_ranks_counts_and_measures_position_bias():
    votes = [{"row": 0, "left": "soft: a", "right": "bare model", "choice": "left"},
             {"row": 1, "left": "soft: a", "right": "hard: default", "choice": "left"},
             {"row": 2, "left": "hard: default", "right": "soft: a", "choice": "right"},
             {"row": 0, "left": "bare model", "right": "hard: default", "choice": "left"},
             {"row": 1, "left": "bare model", "right": "hard: default", "choice": "both_bad"}]
    s = rating_summary(votes, NAMES, n_resamples=50)
    assert s["ranking"][0]["system"] == "soft: a" and s["ranking"][0]["low"] <= s["ranking"][0]["strength"]
    assert s["position_bias"] == 0.75 and s["votes"] == 5 and s["both_bad"] == 1
    pair = next(p for p in s["pairs"] if {p["a"], p["b"]} == {"soft: a", "hard: default"})
    assert pair["a wins"] + pair["b wins"] == 2


def test_next_pair_takes_the_least_rated_pair_and_hides_nothing_it_needs(home):
    result = stored_result()
    first = next_pair(result, [])
    assert {first["left"], first["right"]} <= set(NAMES) and first["left"] != first["right"]
    votes = [{"row": r, "left": first["left"], "right": first["right"], "choice": "tie"} for r in range(3)]
    second = next_pair(result, votes)
    assert {second["left"], second["right"]} != {first["left"], first["right"]}
    assert second["left_output"] == result["outputs"][second["left"]][second["row"]]


def test_blind_rating_tab_casts_a_vote_and_shows_the_ranking(home):
    result = stored_result()
    at = AppTest.from_file(str(REPO / "pages" / "compare.py"), default_timeout=60)
    at.session_state["cmp_key"] = result["key"]
    at.run()
    assert not at.exception
    texts = [t.value for t in at.get("text")]
    assert sum(t.endswith(("says 0", "says 1", "says 2")) for t in texts) == 2  # two outputs, no names
    at.button(key="rate_left").click().run()
    assert not at.exception
    [vote] = load_votes(result["key"])
    assert vote["choice"] == "left"
    ranking = next(d.value for d in at.dataframe if "strength" in d.value.columns)
    assert set(ranking["system"]) == set(NAMES) and ranking["votes"].sum() == 2  # one vote, two sides
