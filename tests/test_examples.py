"""Every example config is valid and trains for a few steps (on a tiny model standing in for the real one); the demo
scripts load the libraries only once they have quieted them."""

import subprocess
import sys
from pathlib import Path

import pytest

from llm_tuning import load_config, train

ROOT = Path(__file__).resolve().parent.parent
# run configs; examples/compare holds compare files (tests/comparison checks them)
EXAMPLES = sorted(path for path in ROOT.glob("examples/**/*.yaml") if "compare" not in path.relative_to(ROOT).parts)


def test_there_is_an_example_per_method():
    from llm_tuning.methods.registry import METHODS

    names = {load_config(path).method.name for path in EXAMPLES}
    assert names >= set(METHODS)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_example_trains_a_few_steps(path, tiny_models, records_path, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # examples name their data relative to the repository root
    config = load_config(path)
    assert Path(config.data.path).is_file()
    architecture = "bloom" if config.method.name == "bitfit" else "llama"  # BitFit needs biases
    summary = train(
        load_config(
            path,
            [
                f"model.path={tiny_models[architecture]}",
                f"data.path={records_path}",
                f"train.output_dir={tmp_path / 'run'}",
                "train.max_steps=2",
            ],
        )
    )
    assert summary["status"] == "completed" and summary["steps"] == 2


@pytest.mark.parametrize("path", sorted(ROOT.glob("examples/deepspeed/*.json")), ids=lambda p: p.name)
def test_deepspeed_examples_are_zero_2_or_3(path):
    from llm_tuning.training.sharding import sharding_of

    sharding = sharding_of(load_config(None, ["model.path=unused", f"train.deepspeed={path}"]))
    assert sharding.kind == "zero" and sharding.states_sharded
    assert sharding.weights_sharded == ("zero3" in path.name)
    assert sharding.optimizer_offloaded == ("offload" in path.name)


@pytest.mark.parametrize("script", ["demo.py", "demo_gguf.py"])
def test_a_demo_loads_the_libraries_only_inside_main(script):
    """Before its `main`, a demo script may not load torch, transformers or bitsandbytes: bitsandbytes warns on import
    (on CPUs with AVX512-BF16) before quiet_libraries can hide it, and demo.py's restart on tcmalloc would load torch
    a second time."""
    probe = (
        "import runpy, sys; runpy.run_path(sys.argv[1]); "
        "print(sorted(name for name in ('torch', 'transformers', 'bitsandbytes') if name in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(ROOT / "examples" / script)], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]" and result.stderr == ""
