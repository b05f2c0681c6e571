"""Read Alpaca-style instruction records (`instruction`, optional `input`, `output`) from JSON or JSONL.

Every problem names the file and line (JSONL) or record number (JSON), so a bad record never passes silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

SUPPORTED_SUFFIXES = (".json", ".jsonl")


@dataclass(frozen=True)
class Record:
    instruction: str
    input: str
    output: str
    where: str  # "file:line" or "file record #n", for messages

    def user_message(self) -> str:
        return user_message(self.instruction, self.input)


def user_message(instruction: str, input: str) -> str:
    """The user's turn of an Alpaca record: the instruction, then the input on its own line when there is one."""
    return f"{instruction}\n{input}" if input else instruction


def read_records(path: str | Path) -> list[Record]:
    records = [_to_record(obj, where) for obj, where in read_json_objects(path, what="data")]
    if not records:
        raise UserError(f"{path}: no records")
    return records


def read_json_objects(path: str | Path, what: str) -> list[tuple[object, str]]:
    """The JSON values of a .json list or a .jsonl file, each with where it stands ("file:line")."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    if path.suffix not in SUPPORTED_SUFFIXES:
        raise UserError(f"{path}: unsupported {what} format '{path.suffix}'; supported: {', '.join(SUPPORTED_SUFFIXES)}")
    text = read_text(path)
    return _read_jsonl(path, text) if path.suffix == ".jsonl" else _read_json(path, text)


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None


def _read_jsonl(path: Path, text: str) -> list[tuple[object, str]]:
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((json.loads(line), f"{path}:{number}"))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{number}: invalid JSON: {e.msg} (column {e.colno})") from None
    return items


def _read_json(path: Path, text: str) -> list[tuple[object, str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of records, got a {type(data).__name__}")
    return [(obj, f"{path} record #{index}") for index, obj in enumerate(data)]


def _to_record(obj: object, where: str) -> Record:
    if not isinstance(obj, dict):
        raise UserError(f"{where}: a record must be a JSON object with instruction, input, output")
    fields = {}
    for name, required in (("instruction", True), ("input", False), ("output", True)):
        value = obj.get(name, None if required else "")
        if value is None and not required:
            value = ""
        if value is None:
            raise UserError(f"{where}: missing field '{name}'")
        if not isinstance(value, str):
            raise UserError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
        fields[name] = value
    if not fields["instruction"].strip():
        raise UserError(f"{where}: empty 'instruction'")
    if not fields["output"].strip():
        raise UserError(f"{where}: empty 'output' (nothing to learn)")
    return Record(**fields, where=where)
