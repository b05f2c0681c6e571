"""`llm-tuning eval`: scores that mean what they say, files written, and a trained run beating its base."""

import json

import pytest

from llm_tuning.cli import main
from llm_tuning.evaluation import text_metrics


def test_identical_answers_score_100_and_unrelated_ones_0():
    same = text_metrics(
        ["我是小调，一个助手。", "Four apples and two pears."], ["我是小调，一个助手。", "Four apples and two pears."]
    )
    assert same == {"bleu4": 100.0, "rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0, "exact_match": 100.0}
    unrelated = text_metrics(["天气很好"], ["Four apples."])
    assert unrelated["rouge1"] == 0.0 and unrelated["exact_match"] == 0.0 and unrelated["bleu4"] < 1.0


def test_partial_overlap_is_between():
    partial = text_metrics(["我 是 一个 很 好 的 助手"], ["我 是 一个 助手"])
    assert 0 < partial["rouge1"] < 100 and 0 < partial["bleu4"] < 100 and partial["exact_match"] == 0


def test_eval_writes_predictions_and_metrics_and_the_run_beats_its_base(trained_run, records_path, tmp_path, capsys):
    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "--adapter",
                str(trained_run.output_dir),
                "--data",
                str(records_path),
                "--output",
                str(out),
                "--limit",
                "3",
                "--compare-base",
                "--max-new-tokens",
                "8",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"bleu4", "rouge1", "rouge2", "rougeL", "exact_match", "loss", "count", "base"}
    assert metrics["count"] == 3
    assert metrics["loss"] < metrics["base"]["loss"]  # it was trained on these very answers
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and {"prompt", "reference", "prediction", "base_prediction"} <= set(lines[0])
    assert main(["eval", "--adapter", str(trained_run.output_dir), "--data", str(records_path), "--output", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err


def test_eval_without_model_is_an_error(records_path, capsys):
    assert main(["eval", "--data", str(records_path)]) == 2
    assert "eval needs --adapter RUN_DIR" in capsys.readouterr().err


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_eval_limit_must_be_positive(trained_run, records_path, limit, capsys):
    assert main(["eval", "--adapter", str(trained_run.output_dir), "--data", str(records_path), "--limit", limit]) == 2
    assert "--limit must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["prompt", "ptuning_mlp", "prefix", "adapter"])
def test_reference_loss_of_every_kind_of_run_is_the_labelled_tokens_loss(method_run, records_path, case):
    """Prompt and P-tuning put virtual tokens before the input, so the model returns logits for them too: the loss
    must be read off the input's own positions (peft's own labelled loss is the reference)."""
    import torch

    from llm_tuning.data.encode import encode_example
    from llm_tuning.data.records import read_examples
    from llm_tuning.evaluation import reference_loss
    from llm_tuning.generation import Session

    session = Session(adapter=method_run(case, "llama").output_dir)
    example = read_examples(str(records_path)).examples[0]
    sample = encode_example(example, session.template, session.tokenizer, 64)
    with torch.no_grad():
        expected = session.model(input_ids=torch.tensor([sample["input_ids"]]), labels=torch.tensor([sample["labels"]])).loss
    assert reference_loss(session, [example]) == pytest.approx(expected.item(), rel=1e-5)
