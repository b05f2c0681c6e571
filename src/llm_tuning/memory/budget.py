"""Fit a run to the memory there is: refuse one whose estimate exceeds it, and propose settings that fit."""

from __future__ import annotations

import psutil
import torch

from ..config.load import load_config
from ..config.sections import Config
from ..errors import UserError
from ..methods.registry import get_method
from .estimate import estimate


def propose_for_budget(config: Config, budget: int, device: str = "cpu", processes: int = 1) -> dict | None:
    """The largest micro-batch that fits `budget`, trying the config as it is, then with gradient
    checkpointing, then (for adapter methods) on a 4-bit base; the effective batch is kept through
    gradient accumulation. None if nothing fits."""
    effective = config.train.batch_size * config.train.gradient_accumulation_steps
    choices = [[], ["train.gradient_checkpointing=true"]]
    if not get_method(config.method.name).trains_base and config.model.quantization == "none":
        choices.append(["train.gradient_checkpointing=true", "model.quantization=4bit"])
    for extra in choices:
        for batch in sorted({b for b in (effective, 64, 32, 16, 8, 4, 2, 1) if b <= effective}, reverse=True):
            settings = [*extra, f"train.batch_size={batch}", f"train.gradient_accumulation_steps={-(-effective // batch)}"]
            candidate = load_config(config.to_dict(), settings)
            total = estimate(candidate, device=device, processes=processes)["total_bytes"]
            if total <= budget:
                return {"overrides": settings, "total_bytes": total}
    return None


def available_bytes(device: str) -> int:
    """Memory a new run can use: free RAM (including reclaimable cache) on a CPU, free memory on the GPU."""
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    return psutil.virtual_memory().available


def check_fits(config: Config, predicted: dict, sharing: int = 1) -> None:
    """Refuse a run whose estimate exceeds the memory available, naming settings that would fit. `sharing`: how
    many training processes on this machine share that memory (on a CPU, all of them; on GPUs, one per device)."""
    device = predicted["device"]
    available = available_bytes(device) // sharing
    if predicted["total_bytes"] <= available:
        return
    proposal = propose_for_budget(config, available, device=device, processes=predicted.get("processes", 1))
    if proposal:
        advice = "it would fit with " + " ".join(proposal["overrides"])
    else:
        advice = "no batch size, checkpointing or quantization makes it fit"
    each = f" in each of {sharing} processes" if sharing > 1 else ""
    raise UserError(
        f"this run needs about {predicted['total_bytes'] / 2**30:.1f} GiB ({device}){each} but {available / 2**30:.1f} GiB "
        f"is free{' per process' if each else ''}; {advice} (llm-tuning estimate shows the components; "
        "train.check_memory=false skips this check)"
    )
