from pathlib import Path

import pytest

from llm_tuning.config.load import load_config
from llm_tuning.config.reference import reference_markdown, reference_rows, section_reference
from llm_tuning.errors import UserError
from llm_tuning.methods.registry import METHODS
from llm_tuning.rundir import load_run_config, save_run_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_follow_peft_for_lora():
    config = load_config()
    assert config.method.name == "lora"
    assert (config.method.r, config.method.lora_alpha, config.method.lora_dropout) == (8, 8, 0.0)
    assert config.method.target_modules is None  # peft picks the architecture's default
    assert config.model.path == "smollm2-135m"


def test_yaml_and_overrides_are_typed(tmp_path):
    path = write(tmp_path, "method: {name: lora, r: 8}\ntrain: {max_steps: 60, learning_rate: 2.0e-4}\n")
    config = load_config(
        path,
        [
            "method.r=16",
            "train.max_steps=20",
            "method.target_modules=[q_proj, v_proj]",
            "train.learning_rate=1e-3",
            "train.overwrite=true",
        ],
    )
    assert config.method.r == 16
    assert config.train.max_steps == 20
    assert config.method.target_modules == ["q_proj", "v_proj"]
    assert config.train.learning_rate == pytest.approx(1e-3)
    assert config.train.overwrite is True


def test_target_modules_take_a_regex_string(tmp_path):
    config = load_config(None, [r"method.target_modules=.*\.(q|v)_proj"])
    assert config.method.target_modules == r".*\.(q|v)_proj"


def test_yaml_1_1_exponent_without_dot_is_a_number(tmp_path):
    # PyYAML reads 2e-4 as a string; the user meant a number.
    config = load_config(write(tmp_path, "train:\n  learning_rate: 2e-4\n"))
    assert config.train.learning_rate == pytest.approx(2e-4)


def test_unknown_key_names_file_line_and_suggests(tmp_path):
    path = write(tmp_path, "model:\n  path: x\ntrain:\n  max_steps: 3\n  lerning_rate: 0.1\n")
    with pytest.raises(UserError) as e:
        load_config(path)
    message = str(e.value)
    assert "'train.lerning_rate'" in message and f"{path}:5" in message
    assert "did you mean 'train.learning_rate'" in message
    assert "\n" not in message


def test_bad_choice_lists_valid_choices(tmp_path):
    with pytest.raises(
        UserError, match=r"'train.lr_scheduler' \(override 'train.lr_scheduler=warp'\): 'warp' is not one of: linear, cosine"
    ):
        load_config(None, ["train.lr_scheduler=warp"])


def test_out_of_range_and_wrong_type(tmp_path):
    with pytest.raises(UserError, match=r"'train.batch_size'.*out of range; it must be >= 1"):
        load_config(None, ["train.batch_size=0"])
    with pytest.raises(UserError, match=r"'method.r'.*expected an integer, got 'big'"):
        load_config(None, ["method.r=big"])
    with pytest.raises(UserError, match=r"'train.warmup_ratio'.*between 0.0 and 0.99"):
        load_config(None, ["train.warmup_ratio=1.5"])
    with pytest.raises(UserError, match=r"'train.overwrite'.*expected true or false"):
        load_config(None, ["train.overwrite=yes please"])


def test_unknown_method_and_section(tmp_path):
    with pytest.raises(
        UserError, match=r"unknown method 'sft'; valid methods: full, freeze, bitfit, prompt, ptuning, prefix, lora, ia3"
    ):
        load_config(write(tmp_path, "method:\n  name: sft\n"))
    with pytest.raises(UserError, match=r"unknown config section 'optim'.*valid sections: model, method, data, train"):
        load_config(write(tmp_path, "optim:\n  lr: 1\n"))
    with pytest.raises(UserError, match=r"bad override 'max_steps=3'"):
        load_config(None, ["max_steps=3"])


def test_yaml_syntax_error_names_line(tmp_path):
    path = write(tmp_path, "train:\n  max_steps: 3\n  seed: [1, 2\n")
    with pytest.raises(UserError, match=rf"{path}:\d+: invalid YAML"):
        load_config(path)
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_relative_paths_are_taken_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    config = load_config(None, ["data.path=data.jsonl", "train.output_dir=runs/x"])
    assert config.data.path == str(tmp_path / "sub" / "data.jsonl")
    assert config.train.output_dir == str(tmp_path / "sub" / "runs" / "x")


def test_run_config_round_trips(tmp_path):
    config = load_config(None, ["method.r=4", "data.template=plain", f"train.output_dir={tmp_path}"])
    save_run_config(config, tmp_path)
    assert load_run_config(tmp_path).to_dict() == config.to_dict()
    with pytest.raises(UserError, match="not an llm-tuning run directory"):
        load_run_config(tmp_path / "..")


def test_docs_config_page_is_current():
    """docs/config.md is what scripts/config_reference.py writes from the options' own declarations."""
    page = Path(__file__).parents[2] / "docs" / "config.md"
    assert page.read_text(encoding="utf-8") == reference_markdown(), "run: python scripts/config_reference.py"


def test_docs_document_every_key():
    page = (Path(__file__).parents[2] / "docs" / "config.md").read_text(encoding="utf-8")
    keys = [row[0] for row in reference_rows()]
    for name, method in METHODS.items():
        keys += [row[0] for row in section_reference("method", method.options)]
    missing = [key for key in keys if f"`{key}`" not in page and key != "method.name"]
    assert not missing, f"docs/config.md lacks {missing}"
