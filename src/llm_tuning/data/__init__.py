"""Instruction data: reading records, formatting them with a template, encoding them with loss masks."""
