"""Settings read once from the environment, checked, and recorded with each run."""
import pytest

from core.errors import WorkbenchError
from core.settings import Settings, runtime


def test_switches_default_on_and_turn_off_with_0():
    assert Settings.from_env({}) == Settings()
    off = Settings.from_env({"WORKBENCH_FLATSTACK": "0", "WORKBENCH_ONEDNN": "0", "WORKBENCH_FUSED": "0",
                             "WORKBENCH_KEEP_HEAP": "0", "WORKBENCH_MAX_DATA_MB": "2.5", "WORKBENCH_STEP_TOKENS": "0"})
    assert (off.flatstack, off.onednn, off.fused, off.keep_heap, off.max_data_mb) == (False, False, False, False, 2.5)
    assert off.step_tokens == 0 and Settings().step_tokens == 1024  # 0: training batches run whole


@pytest.mark.parametrize("env, needle", [({"WORKBENCH_FUSED": "off"}, "WORKBENCH_FUSED='off' is not 0 or 1"),
                                         ({"WORKBENCH_MAX_DATA_MB": "-3"}, "not a positive number"),
                                         ({"WORKBENCH_STEP_TOKENS": "1k"}, "WORKBENCH_STEP_TOKENS='1k' is not a whole")])
def test_bad_values_name_the_variable(env, needle):
    with pytest.raises(WorkbenchError, match=needle):
        Settings.from_env(env)


def test_runtime_record_names_switches_versions_and_machine():
    rec = runtime("cpu", "bf16")
    assert set(rec["settings"]) == {"flatstack", "onednn", "fused", "keep_heap", "max_data_mb",
                                     "step_tokens"}
    assert rec["precision"] == "bf16" and rec["versions"]["transformers"] and rec["machine"]["cores"] >= 1
