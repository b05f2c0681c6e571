"""Print the README's config reference (markdown tables) from the config dataclasses' own help texts.

    python scripts/config_reference.py > /tmp/reference.md   # then paste it under "## Config reference"

tests/test_config.py checks that the README documents every key.
"""

from llm_tuning.config import reference_rows, section_reference
from llm_tuning.methods import METHODS


def table(rows) -> str:
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, type_name, default, help_text in rows:
        escaped = help_text.replace("|", "\\|")
        lines.append(f"| `{key}` | {type_name} | `{default}` | {escaped} |")
    return "\n".join(lines)


def main() -> None:
    rows = reference_rows()
    for section in ("model", "data", "train"):
        print(f"**{section}**\n")
        print(table([r for r in rows if r[0].startswith(section + ".")]))
        print()
    print("**method**: `method.name` picks the method; the other keys depend on it.\n")
    for name, module in METHODS.items():
        options = [r for r in section_reference("method", module.Options) if r[0] != "method.name"]
        print(f"`name: {name}`\n")
        print(table(options) if options else "(no options)")
        print()


if __name__ == "__main__":
    main()
