"""`llm-tuning inspect`: samples with trained spans, length statistics, checks and a PNG histogram."""

import json

import yaml

from helpers import run_config
from llm_tuning.cli import main
from llm_tuning.data.encode import IGNORE_INDEX
from llm_tuning.inspection import length_stats


def test_inspect_json_reports_samples_stats_and_checks(tiny_llama, records_path, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(run_config(tiny_llama, records_path, tmp_path / "out", data={"max_length": 20})))
    assert main(["inspect", str(config), "--json", "--samples", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["samples"]) == 2 and set(report["samples"][0]) >= {"text", "input_ids", "labels", "truncated"}
    for sample in report["samples"]:
        assert any(label != IGNORE_INDEX for label in sample["labels"])
        trained_text = "".join(s["text"] for s in sample["spans"] if s["trained"])
        assert trained_text.endswith("<|im_end|>") != sample["truncated"]  # the stop token goes only with truncation
    stats = report["stats"]
    assert stats["count"] == 4 and stats["max"] > 20 and stats["truncated"] >= 1
    assert set(stats) >= {"count", "mean", "p50", "p95", "max", "truncated", "recommended_max_length"}
    assert all(check["ok"] for check in report["checks"][:2])  # stop tokens trained, no padding labelled
    png = tmp_path / "run.lengths.png"
    assert report["histogram"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["inspect", str(config), "--json"]) == 0  # a second run never overwrites the first picture
    assert json.loads(capsys.readouterr().out)["histogram"] == str(tmp_path / "run.lengths-1.png")


def test_length_statistics_and_the_recommended_max_length():
    stats = length_stats([10] * 50 + [20] * 49 + [1000], max_length=100)
    assert (stats["p50"], stats["p95"], stats["max"], stats["truncated"]) == (10, 20, 1000, 1)
    assert stats["recommended_max_length"] == 24  # 1.5 x the mean of 10s and 20s (the 1000 is an outlier), to a multiple of 8
