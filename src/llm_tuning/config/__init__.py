"""The run configuration: `schema` (typed options with help and bounds), `sources` (YAML with line numbers,
overrides), `sections` (model, data, train; `method` comes from the chosen method), `load` (a validated Config)
and `reference` (the docs' table of every key)."""
