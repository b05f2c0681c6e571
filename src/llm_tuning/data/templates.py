"""Prompt templates: how a conversation becomes token ids, the same for training and for generation.

A template gives the ids of the prompt (everything before the assistant's answer) and of the answer,
which always ends in the tokenizer's EOS *id*: a literal "</s>" in text may be split into ordinary
pieces by some tokenizers, and a model that never sees the real EOS never learns to stop.
Prompt and answer are tokenised separately, without the tokenizer's automatic special tokens.
"""

from __future__ import annotations

from ..errors import UserError

TEMPLATES = ("plain", "native")


def resolve_template_name(name: str, tokenizer) -> str:
    """`auto` becomes `native` when the tokenizer carries a chat template, else `plain`."""
    if name == "auto":
        return "native" if getattr(tokenizer, "chat_template", None) else "plain"
    if name == "native" and not getattr(tokenizer, "chat_template", None):
        raise UserError("data.template is 'native' but the tokenizer has no chat template; use 'plain' or 'auto'")
    if name not in TEMPLATES:
        raise UserError(f"unknown template '{name}'; valid templates: auto, {', '.join(TEMPLATES)}")
    return name


def get_template(name: str, tokenizer):
    name = resolve_template_name(name, tokenizer)
    return PlainTemplate() if name == "plain" else NativeTemplate()


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no EOS token; a model trained without one never learns to stop")
    return tokenizer.eos_token_id


class PlainTemplate:
    """The seed tutorials' format: `Human: {user}\\n\\nAssistant: {answer}<eos>`."""

    name = "plain"
    # The same format as a Jinja chat template, written into merged models so they are served as trained.
    jinja = (
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}{{ 'Human: ' + message['content'] + '\\n\\nAssistant: ' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}"
        "{% endfor %}"
    )

    def prompt_ids(self, tokenizer, messages: list[dict]) -> list[int]:
        """Ids of a conversation that ends with a user turn, ready for the assistant's answer."""
        ids: list[int] = []
        for message in messages:
            if message["role"] == "user":
                ids += _ids(tokenizer, f"Human: {message['content']}\n\nAssistant: ")
            elif message["role"] == "assistant":
                ids += _ids(tokenizer, message["content"]) + [_eos_id(tokenizer)]
        return ids

    def response_ids(self, tokenizer, messages: list[dict], response: str) -> list[int]:
        return _ids(tokenizer, response) + [_eos_id(tokenizer)]


class NativeTemplate:
    """The tokenizer's own chat template; the answer is what the template adds for the assistant turn,
    cut right after its EOS (the template's trailing newline is not trained), or given one if it has none."""

    name = "native"

    def prompt_ids(self, tokenizer, messages: list[dict]) -> list[int]:
        return _ids(tokenizer, self._prompt_text(tokenizer, messages))

    def response_ids(self, tokenizer, messages: list[dict], response: str) -> list[int]:
        prompt_text = self._prompt_text(tokenizer, messages)
        full_text = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
        if not full_text.startswith(prompt_text):
            raise UserError("the tokenizer's chat template does not extend the prompt with the answer; use data.template: plain")
        ids = _ids(tokenizer, full_text[len(prompt_text):])
        eos = _eos_id(tokenizer)
        if eos in ids:
            return ids[: len(ids) - ids[::-1].index(eos)]
        return ids + [eos]

    @staticmethod
    def _prompt_text(tokenizer, messages: list[dict]) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
