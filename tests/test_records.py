import json

import pytest

from llm_tuning.data.records import read_records
from llm_tuning.errors import UserError


def test_reads_json_and_jsonl(tmp_path):
    items = [{"instruction": "a", "input": "b", "output": "c"}, {"instruction": "d", "output": "e"}]
    (tmp_path / "x.json").write_text(json.dumps(items))
    (tmp_path / "x.jsonl").write_text("\n".join(json.dumps(i) for i in items) + "\n\n")
    for name in ("x.json", "x.jsonl"):
        records = read_records(tmp_path / name)
        assert [(r.instruction, r.input, r.output) for r in records] == [("a", "b", "c"), ("d", "", "e")]
        assert records[1].user_message() == "d" and records[0].user_message() == "a\nb"


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"instruction": "a", "output": "b"', r"x.jsonl:2: invalid JSON"),
        ('{"instruction": "a"}', r"x.jsonl:2: missing field 'output'"),
        ('{"instruction": "a", "output": 3}', r"x.jsonl:2: field 'output' must be a string, got int"),
        ('{"instruction": "a", "output": "  "}', r"x.jsonl:2: empty 'output'"),
        ('["a", "b"]', r"x.jsonl:2: a record must be a JSON object"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "x.jsonl"
    path.write_text('{"instruction": "ok", "output": "ok"}\n' + line + "\n")
    with pytest.raises(UserError, match=message):
        read_records(path)


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="data file not found"):
        read_records(tmp_path / "nope.json")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(UserError, match=r"unsupported data format '.csv'; supported: .json, .jsonl"):
        read_records(tmp_path / "x.csv")
    (tmp_path / "x.json").write_text('{"instruction": "a"}')
    with pytest.raises(UserError, match="expected a JSON list of records"):
        read_records(tmp_path / "x.json")
    (tmp_path / "y.json").write_text('[{"instruction": "a", "output": "b"},\n {"instruction": 1, "output": "b"}]')
    with pytest.raises(UserError, match=r"y.json record #1: field 'instruction' must be a string"):
        read_records(tmp_path / "y.json")
    (tmp_path / "z.jsonl").write_bytes(b'{"instruction": "\xff", "output": "b"}')
    with pytest.raises(UserError, match="not UTF-8"):
        read_records(tmp_path / "z.jsonl")
