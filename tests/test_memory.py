"""`spiking_lm.memory.keep_freed_memory`: freed activation memory is reused instead of faulted in again."""

import os
import subprocess
import sys

import pytest

from spiking_lm import memory

PROBE = """
import resource, sys, torch
from spiking_lm.memory import keep_freed_memory
applied = keep_freed_memory()
for _ in range(2):  # 64 MiB, allocated and freed before counting
    torch.ones(16 << 20)
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(16 << 20)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def probe(**env):
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    applied, faults = result.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(memory._glibc_mallopt() is None, reason="the setting exists only for glibc")
def test_freed_blocks_are_reused_without_page_faults():
    applied, kept_faults = probe()
    assert applied
    applied, default_faults = probe(SPIKING_LM_KEEP_FREED_MEMORY="0")
    assert not applied
    assert default_faults > 10 * 16_384 // 2  # the default: every 64 MiB block is fresh pages (16,384 of 4 KiB each)
    # kept: most blocks reuse memory (seen: 0-3 of the ten fresh; the kernel's proactive reclaim may take a kept
    # block back now and then, so this asserts the halving, not an exact count)
    assert kept_faults <= default_faults // 2


def test_sizes_out_of_range_are_refused():
    with pytest.raises(ValueError, match="MiB"):
        memory.keep_freed_memory(mmap_threshold_mb=4096)
