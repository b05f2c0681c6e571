"""The fine-tuning methods, one module each (full, freeze, bitfit, prompt, ptuning, prefix, lora, ia3,
adapter), each
described by a `Method` record (method.py) and listed in `registry.py`."""
