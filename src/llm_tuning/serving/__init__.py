"""`llm-tuning serve`: an OpenAI-compatible HTTP server for a base model and the runs trained on it.

`models` loads the base once and every run on it by name, `protocol` checks requests and shapes responses and errors
as OpenAI's API does, `batching` queues requests and answers those that arrive together in one batch (`rows`: one
batch on the model), `guard` checks the API key and the body size, `app` holds the routes and `launch` starts it all.
"""
