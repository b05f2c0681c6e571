"""Memory of a training run: `estimate` predicts its peak from the config alone, `budget` finds settings that
fit a budget and refuses runs that cannot fit, `measure` reads the real peak of a run. docs/memory.md."""
