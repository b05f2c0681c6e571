"""Read training examples: Alpaca records (`instruction`, optional `input`, `output`; optional `system` and
`history`), ShareGPT (`conversations` of `from` / `value`) and OpenAI-style `messages`, from JSON, JSONL, CSV,
Parquet, a folder written by `datasets`' `save_to_disk`, or a hub dataset id.

Every problem names the file and line (JSON, JSONL, CSV) or row, so a bad record never passes silently:
it is an error, or with `skip_invalid` it is skipped and counted.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError, first_line
from ..hub import check_hub_reachable, looks_like_hub_id

SUPPORTED_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
JSON_SUFFIXES = (".json", ".jsonl")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "system": "system",
}
FIELDS = ("instruction", "input", "output", "system", "history", "conversations", "messages")


@dataclass(frozen=True)
class Example:
    messages: tuple  # ({"role": "user" | "assistant", "content": str}, ...), ending with an assistant turn
    where: str  # "file:line" or "file row #n", for messages
    system: str | None = None


@dataclass
class ReadResult:
    examples: list[Example] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "where: why", with skip_invalid


def user_message(instruction: str, input: str) -> str:
    """The user's turn of an Alpaca record: the instruction, then the input on its own line when there is one."""
    return f"{instruction}\n{input}" if input else instruction


def read_examples(paths, columns: dict | None = None, skip_invalid: bool = False) -> ReadResult:
    """Examples from one path or several, in order. `columns` maps our field names to the data's own."""
    result = ReadResult()
    rename = {theirs: ours for ours, theirs in (columns or {}).items()}
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        problems: list[str] | None = result.skipped if skip_invalid else None
        for obj, where in read_rows(str(path), problems):
            try:
                result.examples.append(to_example(obj, where, rename))
            except UserError as e:
                if problems is None:
                    raise
                problems.append(str(e))
    if not result.examples:
        raise UserError(
            f"{paths}: no usable records" + (f" ({len(result.skipped)} skipped as invalid)" if result.skipped else "")
        )
    return result


def read_rows(path: str, problems: list[str] | None = None) -> list[tuple[object, str]]:
    """The raw rows of a data source, each with where it stands."""
    location = Path(path)
    if location.is_dir():
        return _read_saved_dataset(location)
    if location.is_file():
        if location.suffix not in SUPPORTED_SUFFIXES:
            raise UserError(
                f"{location}: unsupported data format '{location.suffix}'; supported: {', '.join(SUPPORTED_SUFFIXES)}, "
                "a save_to_disk folder, or a hub dataset id"
            )
        if location.suffix == ".parquet":
            return _read_parquet(location)
        if location.suffix == ".csv":
            return _read_csv(location, problems)
        return read_json_objects(location, "data", problems)
    if looks_like_hub_id(path, SUPPORTED_SUFFIXES):
        return _read_hub_dataset(path)
    raise UserError(f"data file not found: {path}")


def read_json_objects(path: str | Path, what: str, problems: list[str] | None = None) -> list[tuple[object, str]]:
    """The JSON values of a .json list or a .jsonl file, each with where it stands ("file:line")."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    if path.suffix not in JSON_SUFFIXES:
        raise UserError(f"{path}: unsupported {what} format '{path.suffix}'; supported: {', '.join(JSON_SUFFIXES)}")
    if path.suffix == ".jsonl":
        return _read_jsonl(path, problems)
    return _read_json(path, read_text(path))


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte {e.start})") from None


def _read_jsonl(path: Path, problems: list[str] | None) -> list[tuple[object, str]]:
    """Line by line from the bytes, so that one undecodable or broken line can be skipped alone."""
    items = []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
            if line.strip():
                items.append((json.loads(line), f"{path}:{number}"))
        except UnicodeDecodeError as e:
            _problem(problems, f"{path}:{number}: not UTF-8 text (byte {e.start} of the line)")
        except json.JSONDecodeError as e:
            _problem(problems, f"{path}:{number}: invalid JSON: {e.msg} (column {e.colno})")
    return items


def _read_json(path: Path, text: str) -> list[tuple[object, str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of records, got a {type(data).__name__}")
    lines = _json_list_item_lines(text, len(data))
    return [(obj, f"{path}:{line}" if line else f"{path} record #{index}") for index, (obj, line) in enumerate(zip(data, lines))]


def _json_list_item_lines(text: str, count: int) -> list[int | None]:
    """The line each top-level item of a JSON list starts on (for messages), found with the decoder itself."""
    decoder = json.JSONDecoder()
    lines: list[int | None] = []
    position = text.index("[") + 1
    for _ in range(count):
        while text[position] in " \t\r\n,":
            position += 1
        lines.append(text.count("\n", 0, position) + 1)
        _, position = decoder.raw_decode(text, position)
    return lines


def _read_csv(path: Path, problems: list[str] | None) -> list[tuple[object, str]]:
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    rows = []
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if None in row:  # more cells than header columns
            _problem(problems, f"{where}: {len(row[None])} more cell(s) than the header has columns")
            continue
        rows.append(({k: v for k, v in row.items() if v is not None}, where))
    return rows


def _read_parquet(path: Path) -> list[tuple[object, str]]:
    import pyarrow.parquet as pq  # slow to import; only Parquet files need it

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise UserError(f"{path}: cannot read as Parquet ({first_line(e)})") from None
    return [(row, f"{path} row #{index}") for index, row in enumerate(rows)]


def _read_saved_dataset(folder: Path) -> list[tuple[object, str]]:
    from datasets import DatasetDict, load_from_disk  # slow to import; only hub datasets and saved folders need it

    if not any((folder / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
        raise UserError(f"data.path '{folder}' is a folder but not one written by datasets' save_to_disk")
    dataset = load_from_disk(str(folder))
    if isinstance(dataset, DatasetDict):
        if "train" not in dataset:
            raise UserError(f"{folder}: a DatasetDict without a 'train' split (has {', '.join(dataset)})")
        dataset = dataset["train"]
    return [(row, f"{folder} row #{index}") for index, row in enumerate(dataset.to_list())]


def _read_hub_dataset(name: str) -> list[tuple[object, str]]:
    check_hub_reachable(name, "data.path")
    from datasets import load_dataset  # slow to import; only hub datasets and saved folders need it

    try:
        dataset = load_dataset(name, split="train")
    except Exception as e:  # datasets raises many kinds (connection, missing dataset, bad config)
        raise UserError(f"data.path '{name}': could not load it as a hub dataset ({first_line(e)})") from None
    return [(row, f"{name} row #{index}") for index, row in enumerate(dataset.to_list())]


def _problem(problems: list[str] | None, message: str) -> None:
    if problems is None:
        raise UserError(message)
    problems.append(message)


def to_example(obj: object, where: str, rename: dict | None = None) -> Example:
    """One record of any supported kind as an Example; a one-line error naming `where` if it is not usable."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: a record must be an object (Alpaca fields, 'conversations' or 'messages')")
    if rename:
        obj = {rename.get(key, key): value for key, value in obj.items()}
    system = _optional_string(obj, "system", where)
    if "conversations" in obj:
        turns = [_turn(t, where, "from", "value", SHAREGPT_ROLES) for t in _list(obj, "conversations", where)]
    elif "messages" in obj:
        roles = {"user": "user", "assistant": "assistant", "system": "system"}
        turns = [_turn(t, where, "role", "content", roles) for t in _list(obj, "messages", where)]
    else:
        turns = _alpaca_turns(obj, where)
    if turns and turns[0]["role"] == "system":
        system = turns.pop(0)["content"]
    _check_turns(turns, where)
    return Example(messages=tuple(turns), where=where, system=system or None)


def _alpaca_turns(obj: dict, where: str) -> list[dict]:
    instruction = _string(obj, "instruction", where)
    output = _string(obj, "output", where)
    turns = []
    for number, pair in enumerate(obj.get("history") or []):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise UserError(f"{where}: history item {number} must be a [question, answer] pair of strings")
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    input_text = _optional_string(obj, "input", where) or ""
    return [*turns, {"role": "user", "content": user_message(instruction, input_text)}, {"role": "assistant", "content": output}]


def _string(obj: dict, name: str, where: str) -> str:
    if name not in obj or obj[name] is None:
        present = ", ".join(sorted(str(k) for k in obj)) or "none"
        raise UserError(f"{where}: missing field '{name}' (fields present: {present}; map other names with data.columns)")
    value = obj[name]
    if not isinstance(value, str):
        raise UserError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise UserError(f"{where}: empty '{name}'" + (" (nothing to learn)" if name == "output" else ""))
    return value


def _optional_string(obj: dict, name: str, where: str) -> str | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, str):
        raise UserError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
    return value


def _list(obj: dict, name: str, where: str) -> list:
    value = obj[name]
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: '{name}' must be a non-empty list of turns")
    return value


def _turn(turn: object, where: str, role_key: str, content_key: str, roles: dict) -> dict:
    if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
        raise UserError(f"{where}: every turn needs '{role_key}' and '{content_key}'")
    role = roles.get(turn[role_key])
    if role is None:
        raise UserError(f"{where}: unknown role '{turn[role_key]}'; valid: {', '.join(sorted(roles))}")
    if not isinstance(turn[content_key], str):
        raise UserError(f"{where}: a turn's '{content_key}' must be a string, got {type(turn[content_key]).__name__}")
    return {"role": role, "content": turn[content_key]}


def _check_turns(turns: list[dict], where: str) -> None:
    """User and assistant alternate, starting with the user and ending with a non-empty answer."""
    for index, turn in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if turn["role"] != expected:
            raise UserError(
                f"{where}: turn {index} is '{turn['role']}' where '{expected}' was expected (user and assistant alternate)"
            )
        if turn["role"] == "assistant" and not turn["content"].strip():
            raise UserError(f"{where}: empty assistant turn {index} (nothing to learn)")
    if not turns or turns[-1]["role"] != "assistant":
        raise UserError(f"{where}: the conversation must end with an assistant turn")
