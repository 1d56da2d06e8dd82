"""The training process keeps freed memory: a second step's allocations fault no pages in."""
import platform
import subprocess
import sys

import pytest

SCRIPT = r"""
import resource, sys, torch
from core.model.heap import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def step():  # a step's activations: many blocks of a few MB, all freed at its end
    xs = [torch.ones(2 << 20) for _ in range(40)]  # 40 x 8 MB
    del xs
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc settings")
def test_a_step_reuses_the_pages_the_one_before_freed():
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.strip())
    pages = 40 * (8 << 20) // 4096
    assert faults("default") > pages // 2  # glibc gave the 320 MB back and the second step faulted it in
    assert faults("keep") < pages // 4  # reused (seen: 4,097 and 8,192 of 81,920)


def test_turned_off_by_the_setting(monkeypatch):
    from core.model import heap
    from tests.conftest import use_settings
    use_settings(monkeypatch, keep_heap=False)
    heap.keep_freed_memory.cache_clear()
    try:
        assert heap.keep_freed_memory() is False
    finally:
        heap.keep_freed_memory.cache_clear()
