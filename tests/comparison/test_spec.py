"""A compare file becomes one validated config per variant; every mistake is one line naming the variant."""

import pytest

from llm_tuning.comparison.spec import load_spec
from llm_tuning.errors import UserError


def write(tmp_path, text, name="compare.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_method_is_replaced_other_sections_merge_and_overrides_come_last(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "method: {name: lora, r: 4, lora_alpha: 32}\ntrain: {learning_rate: 1.0e-3, batch_size: 2}\n", "base.yaml")
    path = write(
        tmp_path,
        "base: base.yaml\nvariants:\n"
        "  - {name: same-method, method: {r: 16}}\n"
        "  - {name: other-method, method: {name: ia3}, train: {learning_rate: 1.0e-2}}\n",
    )
    spec = load_spec(path, ["train.batch_size=8"])
    same, other = (v.config for v in spec.variants)
    assert (same.method.name, same.method.r, same.method.lora_alpha) == ("lora", 16, 32)  # merged key by key
    assert other.method.name == "ia3" and other.train.learning_rate == 1e-2  # the method section replaced
    assert same.train.learning_rate == 1e-3 and same.train.batch_size == other.train.batch_size == 8


def test_inline_base(tmp_path):
    path = write(tmp_path, "base: {train: {max_steps: 7}}\nvariants:\n  - {name: a, method: {name: full}}\n")
    assert load_spec(path).variants[0].config.train.max_steps == 7


@pytest.mark.parametrize(
    "text, message",
    [
        ("variants:\n  - {name: a}\n  - {name: a}\n", r"compare.yaml:3: duplicate variant name 'a'"),
        (
            "variants:\n  - {name: a, method: {name: lora, lora_alpa: 4}}\n",
            r"variant 'a' \(.*compare.yaml:2\): unknown config key 'method.lora_alpa' .*did you mean 'method.lora_alpha'",
        ),
        (
            "variants:\n  - {name: ok}\n  - {name: b, train: {batch_size: 0}}\n",
            r"variant 'b' \(.*compare.yaml:3\): config key 'train.batch_size'.*out of range",
        ),
        ("variants:\n  - {name: b, method: {name: magic}}\n", r"variant 'b'.*unknown method 'magic'; valid methods: full"),
        ("variants:\n  - {name: b, train: {seed: 3}}\n", r"variant 'b'.*train.seed is shared by every variant"),
        ("variants:\n  - {method: {name: lora}}\n", r"compare.yaml:2: a variant is a mapping with a 'name'"),
        ("variants:\n  - {name: 'a b'}\n", r"variant name 'a b' must be letters"),
        ("base: {}\nvariant: []\n", r"unknown key 'variant'; a compare file has: base, variants"),
        ("base: {}\n", r"'variants' must be a non-empty list"),
        ("variants: [\n", r"compare.yaml:\d+: invalid YAML"),
    ],
)
def test_mistakes_are_one_line_errors_naming_the_variant(tmp_path, text, message):
    with pytest.raises(UserError, match=message) as error:
        load_spec(write(tmp_path, text))
    assert "\n" not in str(error.value)


def test_missing_files(tmp_path):
    with pytest.raises(UserError, match="compare file not found"):
        load_spec(tmp_path / "none.yaml")
    with pytest.raises(UserError, match="config file not found"):
        load_spec(write(tmp_path, "base: missing.yaml\nvariants:\n  - {name: a}\n"))
