"""Every supported source and record kind reads into the same examples; every bad record is an error naming
file and line (or row), or, with skip_invalid, skipped and counted."""

import json

import pytest

from llm_tuning.data.records import read_examples
from llm_tuning.errors import UserError

ALPACA = [{"instruction": "a", "input": "b", "output": "c"}, {"instruction": "d", "input": "", "output": "e"}]
EXPECTED = [(("user", "a\nb"), ("assistant", "c")), (("user", "d"), ("assistant", "e"))]


def turns(result):
    return [tuple((m["role"], m["content"]) for m in e.messages) for e in result.examples]


def test_every_file_format_reads_the_same_records(tmp_path):
    import pandas as pd
    from datasets import Dataset

    (tmp_path / "x.json").write_text(json.dumps(ALPACA))
    (tmp_path / "x.jsonl").write_text("\n".join(json.dumps(i) for i in ALPACA) + "\n\n")
    pd.DataFrame(ALPACA).to_csv(tmp_path / "x.csv", index=False)
    pd.DataFrame(ALPACA).to_parquet(tmp_path / "x.parquet")
    Dataset.from_list(ALPACA).save_to_disk(str(tmp_path / "saved"))
    for name in ("x.json", "x.jsonl", "x.csv", "x.parquet", "saved"):
        assert turns(read_examples(tmp_path / name)) == EXPECTED, name


def test_sharegpt_and_messages_are_multi_turn_with_a_system_prompt(tmp_path):
    sharegpt = {
        "system": "Be brief.",
        "conversations": [
            {"from": "human", "value": "hi"},
            {"from": "gpt", "value": "hello"},
            {"from": "human", "value": "2+2?"},
            {"from": "gpt", "value": "4"},
        ],
    }
    messages = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ]
    }
    (tmp_path / "chats.jsonl").write_text(json.dumps(sharegpt) + "\n" + json.dumps(messages) + "\n")
    result = read_examples(tmp_path / "chats.jsonl")
    expected = (("user", "hi"), ("assistant", "hello"), ("user", "2+2?"), ("assistant", "4"))
    assert turns(result) == [expected, expected]
    assert [e.system for e in result.examples] == ["Be brief.", "Be brief."]


def test_columns_map_other_field_names_and_several_paths_concatenate(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"context": "q", "target": "r"}) + "\n")
    (tmp_path / "b.json").write_text(json.dumps([{"context": "s", "target": "t"}]))
    result = read_examples([tmp_path / "a.jsonl", tmp_path / "b.json"], columns={"instruction": "context", "output": "target"})
    assert turns(result) == [(("user", "q"), ("assistant", "r")), (("user", "s"), ("assistant", "t"))]
    with pytest.raises(
        UserError,
        match=r"a.jsonl:1: missing field 'instruction' \(fields present: context, target; map other names with data.columns\)",
    ):
        read_examples(tmp_path / "a.jsonl")


BAD_LINES = [
    ('{"instruction": "a", "output": "b"', r"x.jsonl:2: invalid JSON"),
    ('{"instruction": "a"}', r"x.jsonl:2: missing field 'output'"),
    ('{"instruction": "a", "output": 3}', r"x.jsonl:2: field 'output' must be a string, got int"),
    ('{"instruction": "a", "output": "  "}', r"x.jsonl:2: empty 'output'"),
    ('["a", "b"]', r"x.jsonl:2: a record must be an object"),
    ('{"messages": [{"role": "user", "content": "a"}]}', r"x.jsonl:2: the conversation must end with an assistant turn"),
    ('{"conversations": [{"from": "gpt", "value": "a"}]}', r"x.jsonl:2: turn 0 is 'assistant' where 'user' was expected"),
    ('{"conversations": [{"from": "alien", "value": "a"}]}', r"x.jsonl:2: unknown role 'alien'"),
]


@pytest.mark.parametrize("line, message", BAD_LINES)
def test_bad_records_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "x.jsonl"
    path.write_text('{"instruction": "ok", "output": "ok"}\n' + line + "\n")
    with pytest.raises(UserError, match=message):
        read_examples(path)


def test_skip_invalid_skips_and_counts_every_kind_of_bad_record(tmp_path):
    path = tmp_path / "x.jsonl"
    good = '{"instruction": "ok", "output": "ok"}'
    path.write_bytes(
        ("\n".join([good] + [line for line, _ in BAD_LINES] + [good]) + "\n").encode()
        + b'{"instruction": "\xff", "output": "b"}\n'
    )
    result = read_examples(path, skip_invalid=True)
    assert len(result.examples) == 2
    assert len(result.skipped) == len(BAD_LINES) + 1
    assert any(reason.startswith(f"{path}:2: invalid JSON") for reason in result.skipped)
    assert any(reason.startswith(f"{path}:{len(BAD_LINES) + 3}: not UTF-8") for reason in result.skipped)


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="data file not found"):
        read_examples(tmp_path / "nope.json")
    (tmp_path / "x.txt").write_text("a,b")
    with pytest.raises(UserError, match=r"unsupported data format '.txt'; supported: .json, .jsonl, .csv, .parquet"):
        read_examples(tmp_path / "x.txt")
    (tmp_path / "x.json").write_text('{"instruction": "a"}')
    with pytest.raises(UserError, match="expected a JSON list of records"):
        read_examples(tmp_path / "x.json")
    (tmp_path / "y.json").write_text('[{"instruction": "a", "output": "b"},\n {"instruction": 1, "output": "b"}]')
    with pytest.raises(UserError, match=r"y.json:2: field 'instruction' must be a string"):
        read_examples(tmp_path / "y.json")
    (tmp_path / "z.jsonl").write_bytes(b'{"instruction": "\xff", "output": "b"}')
    with pytest.raises(UserError, match="z.jsonl:1: not UTF-8"):
        read_examples(tmp_path / "z.jsonl")
    (tmp_path / "w.csv").write_text("instruction,output\na,b,c\n")
    with pytest.raises(UserError, match=r"w.csv:2: 1 more cell\(s\) than the header has columns"):
        read_examples(tmp_path / "w.csv")
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match="not one written by datasets' save_to_disk"):
        read_examples(tmp_path / "folder")


def test_hub_dataset_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(UserError, match=r"data.path 'someone/some-data' looks like a hub id, but 127.0.0.1 cannot be reached"):
        read_examples("someone/some-data")
