import json

import pandas as pd
import pytest

from core.errors import WorkbenchError
from core.tasks import BUILTIN, few_shot_template, load_records, load_task, split_records


def test_split_is_deterministic_disjoint_and_complete():
    rows = [{"input": f"x{i}", "target": f"y{i}"} for i in range(100)]
    a = split_records(rows)
    assert [len(s) for s in a] == [80, 10, 10]
    ids = [r["input"] for s in a for r in s]
    assert sorted(ids) == sorted(r["input"] for r in rows)
    assert split_records(rows) == a  # same seed, same split


@pytest.mark.parametrize("name", list(BUILTIN))
def test_builtin_tasks_load_with_three_splits(name, home):
    task = load_task(name)
    assert len(task.train) > len(task.validation) > 0 and len(task.test) > 0
    assert "{input}" in task.spec.hard_prompt
    ins = {r["input"] for r in task.train}
    assert not ins & {r["input"] for r in task.test}


def write(tmp_path, name, text, mode="w"):
    p = tmp_path / name
    if mode == "wb":
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


def test_csv_jsonl_parquet_with_column_mapping(tmp_path, home):
    df = pd.DataFrame({"question": ["q1", "q2", "q3"], "answer": ["a1", "a2", "a3"], "other": [1, 2, 3]})
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_parquet(tmp_path / "d.parquet")
    write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in df.to_dict("records")))
    for ext in ("csv", "parquet", "jsonl"):
        rows = load_records(tmp_path / f"d.{ext}", "question", "answer")
        assert rows == [{"input": "q1", "target": "a1"}, {"input": "q2", "target": "a2"},
                        {"input": "q3", "target": "a3"}]


def test_missing_column_names_the_columns(tmp_path, home):
    p = write(tmp_path, "d.csv", "text,label\nhello,pos\n")
    with pytest.raises(WorkbenchError) as e:
        load_records(p, "input", "label")
    assert "'input'" in str(e.value) and "text" in str(e.value)


@pytest.mark.parametrize("name,content,needle", [
    ("empty.csv", "", "empty"),
    ("bad.jsonl", '{"input": "a", "target": "b"}\n{"input": "broken\n', "could not be read"),
    ("latin.csv", "input,target\ncaf\xe9,x\n".encode("latin-1"), "UTF-8"),
    ("d.txt", "hello", "unsupported"),
    ("blank.csv", "input,target\n ,\n", "no rows"),
])
def test_bad_files_get_clear_errors(tmp_path, home, name, content, needle):
    p = write(tmp_path, name, content, "wb" if isinstance(content, bytes) else "w")
    with pytest.raises(WorkbenchError) as e:
        load_records(p)
    assert needle in str(e.value)


def test_missing_file_and_unknown_task(home):
    with pytest.raises(WorkbenchError, match="does not exist"):
        load_records("/nonexistent/data.csv")
    with pytest.raises(WorkbenchError, match="not built in"):
        load_task("no-such-task")


def test_few_shot_template_holds_k_solved_examples(home):
    task = load_task("sentiment")
    tpl = few_shot_template(task, 3, seed=1)
    assert tpl.count("{input}") == 1 and tpl.endswith(task.spec.hard_prompt)
    assert sum(tpl.count(f" {lab}") for lab in task.spec.labels) >= 3
    assert few_shot_template(task, 3, seed=1) == tpl


@pytest.mark.parametrize("columns, expected", [
    (["question", "answer"], ("question", "answer")),
    (["answer", "question"], ("question", "answer")),
    (["id", "Text", "Label"], ("Text", "Label")),
    (["a", "b", "c"], ("a", "b")),
    (["reference", "prompt"], ("prompt", "reference")),
    (["only"], ("only", "only")),
    (["input", "target"], ("input", "target")),
])
def test_one_column_guess_for_every_upload(columns, expected):
    from core.tasks import guess_columns
    assert guess_columns(columns) == expected
