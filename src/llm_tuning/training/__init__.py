"""`llm-tuning train`: `run` is the whole run from config to run summary; `trainer` sets up transformers'
Trainer (with `loss`, the chunked loss on labelled tokens); `precision` holds the half-precision rules,
`gradient_checkpointing` the recomputation switch, `callbacks` the progress, log and stops, `summary` what a
run reports."""
