"""The tokenizer's own chat template as a training template: each assistant turn is what the chat template adds
for it, trained, the rest masked."""

from __future__ import annotations

from ..errors import UserError
from .tokens import Segment, eos_id, text_ids


class NativeTemplate:
    """The tokenizer's own chat template. Each assistant turn is what the template adds for it, cut right after
    the EOS (the template's trailing newline is masked), or given one if it has none; the rest is masked."""

    name = "native"
    jinja = None

    def segments(self, tokenizer, messages: list[dict], system: str | None = None) -> list[Segment]:
        messages = ([{"role": "system", "content": system}] if system else []) + messages
        segments: list[Segment] = []
        done = ""  # the text of the conversation covered so far
        eos = eos_id(tokenizer)
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt_text = self._render(tokenizer, messages[:index], generation_prompt=True)
            full_text = self._render(tokenizer, messages[: index + 1], generation_prompt=False)
            if not (prompt_text.startswith(done) and full_text.startswith(prompt_text)):
                return self._segments_by_search(tokenizer, messages)  # the template rewrites earlier turns
            segments.append((text_ids(tokenizer, prompt_text[len(done) :]), False))
            answer = text_ids(tokenizer, full_text[len(prompt_text) :])
            if eos in answer:
                cut = len(answer) - answer[::-1].index(eos)
                segments += [(answer[:cut], True), (answer[cut:], False)]
            else:
                segments.append((answer + [eos], True))
            done = full_text
        return [(ids, trained) for ids, trained in segments if ids]

    def _segments_by_search(self, tokenizer, messages: list[dict]) -> list[Segment]:
        """For templates that rewrite earlier turns (Qwen3 drops their reasoning): render the whole conversation
        once and train each answer where it appears, up to and including the EOS that follows it."""
        text = self._render(tokenizer, messages, generation_prompt=False)
        eos_text, eos = tokenizer.eos_token, eos_id(tokenizer)
        segments: list[Segment] = []
        cursor = 0
        for message in messages:
            if message["role"] != "assistant":
                continue
            start = text.find(message["content"], cursor)
            if start < 0:
                raise UserError("the tokenizer's chat template does not render the answers as given; use another data.template")
            end = text.find(eos_text, start + len(message["content"]))
            answer = text_ids(
                tokenizer, text[start : end + len(eos_text)] if end >= 0 else text[start : start + len(message["content"])]
            )
            segments += [(text_ids(tokenizer, text[cursor:start]), False), (answer if end >= 0 else answer + [eos], True)]
            cursor = end + len(eos_text) if end >= 0 else start + len(message["content"])
        segments.append((text_ids(tokenizer, text[cursor:]), False))
        return [(ids, trained) for ids, trained in segments if ids]

    def prompt_ids(self, tokenizer, messages: list[dict], system: str | None = None) -> list[int]:
        messages = ([{"role": "system", "content": system}] if system else []) + messages
        return text_ids(tokenizer, self._render(tokenizer, messages, generation_prompt=True))

    def chat_template(self, tokenizer, default_system: str | None = None) -> str:
        """The tokenizer's own chat template; with `default_system`, a system turn put first where a conversation
        has none, as training did."""
        if not default_system:
            return tokenizer.chat_template
        return (
            "{%- if not (messages and messages[0]['role'] == 'system') -%}"
            f"{{%- set messages = [{{'role': 'system', 'content': {jinja_literal(default_system)}}}] + messages -%}}"
            "{%- endif -%}" + tokenizer.chat_template
        )

    def answer_end_id(self, tokenizer) -> int:
        return eos_id(tokenizer)

    def stop_ids(self, tokenizer) -> list[int]:
        return [eos_id(tokenizer)]

    @staticmethod
    def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
        if not messages:
            return ""
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def jinja_literal(text: str) -> str:
    """`text` as a Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"
