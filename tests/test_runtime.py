"""`spiking_lm.runtime.keep_freed_memory`: freed activation memory is reused instead of faulted in again."""

import os
import subprocess
import sys

import pytest

from spiking_lm import runtime

PROBE = """
import resource, sys, torch
from spiking_lm.runtime import keep_freed_memory
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


@pytest.mark.skipif(runtime._glibc_mallopt() is None, reason="the setting exists only for glibc")
def test_freed_blocks_are_reused_without_page_faults():
    applied, faults = probe()
    assert applied
    # ten 64 MiB blocks: at most two come from fresh pages (16,384 faults each, seen: 0 or 1), the rest reuse memory
    assert faults <= 2 * 16_384
    applied, faults = probe(SPIKING_LM_KEEP_FREED_MEMORY="0")
    assert not applied
    assert faults > 10 * 16_384 // 2  # the default: every block is fresh pages (16,384 of 4 KiB each)


def test_sizes_out_of_range_are_refused():
    with pytest.raises(ValueError, match="MiB"):
        runtime.keep_freed_memory(mmap_threshold_mb=4096)
