"""`llm-tuning compare --plan`: what each variant trains and the peak memory it needs, from config.json alone
(no weights, no data), in seconds, so that a 7B comparison is planned on a laptop."""

from __future__ import annotations

from ..errors import UserError
from ..memory.estimate import estimate
from ..params import plan as count_trainable
from ..params import trainable_line
from .spec import CompareSpec


def plan_comparison(spec: CompareSpec, device: str = "cpu") -> dict:
    """One row per variant: the `trainable params || all params || trainable%` counts as peft prints them and
    the estimated peak memory by component; `error` is the one-line reason a variant cannot run, else None."""
    rows = []
    for variant in spec.variants:
        row = {
            "name": variant.name,
            "method": variant.config.method.name,
            "trainable_params": None,
            "all_params": None,
            "trainable_percent": None,
            "trainable_line": None,
            "estimated_peak_memory_bytes": None,
            "estimated_memory_components": None,
            "error": None,
        }
        try:
            counted = count_trainable(variant.config)
            predicted = estimate(variant.config, device=device)
        except UserError as e:
            row["error"] = str(e)
        else:
            row.update(
                trainable_params=counted["trainable_params"],
                all_params=counted["all_params"],
                trainable_percent=counted["trainable_percent"],
                trainable_line=trainable_line(counted["trainable_params"], counted["all_params"]),
                estimated_peak_memory_bytes=predicted["total_bytes"],
                estimated_memory_components=predicted["components"],
            )
        rows.append(row)
    return {"compare_file": str(spec.path), "device": device, "variants": rows}
