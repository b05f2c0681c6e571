"""`llm-tuning compare`: the methods side by side on the same data. `spec` reads a compare file into one config
per variant, `plan` counts and estimates each from config.json alone, `runner` trains and measures each in its own
process (`worker`), `report` writes results.json, report.md and a self-contained report.html."""
