"""core.model.memory: freed heap memory goes back to the system after a heavy step."""
import sys
from pathlib import Path

import pytest

from core.model.memory import release_freed


def rss_anon_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_heap_blocks_leave_the_resident_set(monkeypatch):
    # as in the app's process: an earlier training test in this process may have taken the training
    # heap settings, under which release_freed steps aside on purpose (the next test checks that)
    monkeypatch.setattr("core.model.heap.keeping", lambda: False)
    blocks = [bytearray(32 * 1024) for _ in range(3200)]  # 100 MiB in blocks below glibc's mmap threshold
    keep = blocks[::16]  # one block in 16 stays: the heap cannot shrink from its top alone
    before = rss_anon_mib()
    del blocks
    held = rss_anon_mib()
    assert release_freed(collect=True)
    assert held > before - 20  # freed, but still resident until trimmed
    assert rss_anon_mib() < held - 60  # most of the 94 MiB freed is returned
    assert len(keep) == 200


def test_a_training_process_keeps_its_heap(monkeypatch):
    monkeypatch.setattr("core.model.heap.keeping", lambda: True)  # core/model/heap.py's settings were taken
    assert not release_freed()
