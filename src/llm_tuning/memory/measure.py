"""The real peak memory of this process: RSS on a CPU, what nvidia-smi would show on a GPU."""

from __future__ import annotations

import resource
import sys

import torch


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes


def peak_memory() -> dict:
    """`peak_memory_bytes`: the process's peak RSS on a CPU; on a GPU, torch's peak reserved memory plus the
    CUDA context (what nvidia-smi shows for the process, to within the allocator's slack), with torch's
    peak allocated memory beside it."""
    if not torch.cuda.is_available():
        return {"peak_memory_bytes": peak_rss_bytes(), "device": "cpu"}
    free, total = torch.cuda.mem_get_info()
    used_by_all = total - free
    peak = max(torch.cuda.max_memory_reserved(), used_by_all - torch.cuda.memory_reserved() + torch.cuda.max_memory_reserved())
    return {
        "peak_memory_bytes": peak,
        "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
        "peak_rss_bytes": peak_rss_bytes(),
        "device": torch.cuda.get_device_name(),
    }
