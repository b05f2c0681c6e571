"""`llm-tuning export`: a trained run (or a model folder) as a GGUF file for llama.cpp, Ollama and LM Studio.
`gguf` is the export itself (merge, template, stop tokens, atomic output), `llama_cpp` runs llama.cpp's own
converter and quantizer, `ollama` writes a Modelfile whose template matches the training prompt."""
