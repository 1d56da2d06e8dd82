import json
import os

import pytest

from core.errors import WorkbenchError

from core.store.paths import check_run_id, run_path, safe_filename, write_json_atomic


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "", ".hidden", "a" * 101, "x/../../etc", "/abs", "a\\b"])
def test_run_ids_that_could_escape_are_refused(home, bad):
    with pytest.raises(WorkbenchError):
        run_path(bad)


def test_good_run_id_stays_inside_runs(home):
    p = run_path("20260101-paraphrase-prompt-tuning")
    assert p.parent == home.resolve() / "runs"
    assert check_run_id("a.b_c-1") == "a.b_c-1"


def test_safe_filename_strips_directories():
    assert safe_filename("../../etc/passwd") == "passwd"
    assert safe_filename("C:\\Users\\me\\data.csv") == "data.csv"
    assert "/" not in safe_filename("a/../b c.csv")
    assert safe_filename("..") == "upload"


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "status.json"
    write_json_atomic(target, {"state": "running", "step": 3})
    write_json_atomic(target, {"state": "completed", "step": 4})
    assert json.loads(target.read_text()) == {"state": "completed", "step": 4}
    assert os.listdir(tmp_path) == ["status.json"]
