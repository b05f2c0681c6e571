"""`compare --plan` gives, per variant, exactly what `llm-tuning params` and `llm-tuning estimate` give."""

import json
from pathlib import Path

import pytest

from llm_tuning.cli import main
from llm_tuning.comparison.plan import plan_comparison
from llm_tuning.comparison.spec import load_spec
from llm_tuning.memory.estimate import estimate
from llm_tuning.params import plan

ROOT = Path(__file__).parents[2]


def test_plan_rows_equal_params_and_estimate(shapes, tmp_path):
    path = tmp_path / "compare.yaml"
    path.write_text(
        f"base: {{model: {{path: {shapes['llama2-7b']}}}, data: {{max_length: 128}}}}\nvariants:\n"
        "  - {name: lora, method: {name: lora}}\n  - {name: ia3, method: {name: ia3}}\n"
        "  - {name: adapter, method: {name: adapter, placement: pfeiffer}}\n  - {name: bitfit, method: {name: bitfit}}\n"
    )
    spec = load_spec(path)
    for device in ("cpu", "cuda"):
        rows = {row["name"]: row for row in plan_comparison(spec, device)["variants"]}
        for variant in spec.variants[:3]:
            counted = plan(variant.config)
            predicted = estimate(variant.config, device=device)
            row = rows[variant.name]
            assert (row["trainable_params"], row["all_params"]) == (counted["trainable_params"], counted["all_params"])
            assert row["estimated_peak_memory_bytes"] == predicted["total_bytes"] and row["error"] is None
            assert row["estimated_memory_components"] == predicted["components"]
        assert rows["bitfit"]["error"].startswith("method bitfit has nothing to train")


def test_seed_example_plan_matches_params_per_variant(capsys, monkeypatch):
    """The trainable-parameter column of the committed BLOOM-1b4 plan is what `llm-tuning params` prints."""
    monkeypatch.chdir(ROOT)  # the example names its model folder relative to the repository root
    assert main(["compare", "examples/compare/seed_bloom_1b4.yaml", "--plan", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["variants"]
    assert len(rows) == 14 and all(row["error"] is None for row in rows)
    spec = load_spec(ROOT / "examples/compare/seed_bloom_1b4.yaml")
    for row, variant in zip(rows, spec.variants):
        overrides = [f"model.path={variant.config.model.path}"]
        method = variant.config.method
        overrides += [f"method.{k}={json.dumps(v)}" for k, v in vars(method).items() if v is not None]
        assert main(["params", *overrides, "--json"]) == 0
        counted = json.loads(capsys.readouterr().out)
        assert (row["trainable_params"], row["all_params"]) == (counted["trainable_params"], counted["all_params"]), row["name"]
    assert rows[6]["trainable_line"] == "trainable params: 1,572,864 || all params: 1,304,684,544 || trainable%: 0.1206"


def test_plan_prints_peft_lines(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["compare", "examples/compare/seed_bloom_1b4.yaml", "--plan", "--device", "cuda"]) == 0
    out = capsys.readouterr().out
    assert "lora-default (lora)\n  trainable params: 1,572,864 || all params: 1,304,684,544 || trainable%: 0.1206" in out
    assert out.count("estimated peak") == 14 and "on cuda" in out


@pytest.mark.parametrize("argument", ["--eval-prompts", "--max-new-tokens"])
def test_bad_numbers_are_one_line_errors(capsys, argument):
    assert main(["compare", "x.yaml", argument, "0"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {argument} must be at least 1, got 0"
