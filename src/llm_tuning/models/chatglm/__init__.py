"""ChatGLM2/3 (and GLM-4's original checkpoints) as a built-in architecture: `configuration` reads the checkpoint's
config.json with its own key names, `layers` and `modeling` are the model in transformers' style with the original
module names, `tokenization` builds a fast tokenizer from the folder's sentencepiece model; none of the checkpoint's
own code runs."""
