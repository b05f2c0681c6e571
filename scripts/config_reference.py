"""Write docs/config.md, the reference of every config key, from the options' own help texts.

    python scripts/config_reference.py

tests/config/test_config.py fails when docs/config.md differs from what this writes.
"""

from pathlib import Path

from llm_tuning.config.reference import reference_markdown

DOCS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "config.md"


def main() -> None:
    DOCS_PAGE.write_text(reference_markdown(), encoding="utf-8")
    print(f"wrote {DOCS_PAGE}")


if __name__ == "__main__":
    main()
