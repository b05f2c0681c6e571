"""Prompt templates: how a conversation becomes token ids, the same for training and for generation.

A template cuts a conversation into segments, each trained or masked: system and user turns (with the
headers around them) are masked, every assistant turn is trained, and it always ends in a stop token *by id*
(the tokenizer's EOS, or the family's end-of-turn token): a literal "</s>" in text may be split into ordinary
pieces by some tokenizers, and a model that never sees the real EOS never learns to stop. Special tokens of a
family's format ([gMASK], <|im_start|>, <|eot_id|> ...) are looked up by id too, never left to the text.
Text parts are tokenised separately, without the tokenizer's automatic special tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from .native_template import NativeTemplate, jinja_literal
from .tokens import Segment, eos_id, special_id, text_ids


@dataclass(frozen=True)
class Token:
    """A special token of the format, put in by its id."""

    text: str


EOS = Token("")  # the tokenizer's own EOS id


@dataclass(frozen=True)
class FormatTemplate:
    """A family's chat format as parts: strings (with `{content}`) are tokenised, Tokens go in by id. The
    user format ends with the assistant's header, so a prompt is ready for the answer; `assistant` ends with the
    stop token and is trained; `after_assistant` (a newline between turns) is masked."""

    name: str
    user: tuple
    assistant: tuple
    system: tuple = ()
    prefix: tuple = ()  # once, at the start of the conversation
    after_assistant: tuple = ()
    system_in_first_user: tuple = ()  # Llama 2 puts the system prompt inside the first [INST]

    def segments(self, tokenizer, messages: list[dict], system: str | None = None) -> list[Segment]:
        """The whole conversation, each part marked trained (assistant turns) or masked."""
        segments: list[Segment] = [(self._ids(tokenizer, self.prefix, ""), False)]
        if system and not self.system_in_first_user:
            segments.append((self._ids(tokenizer, self.system, system), False))
        first_user = True
        for message in messages:
            role, content = message["role"], message["content"]
            if role == "user":
                parts = self.system_in_first_user if (first_user and system and self.system_in_first_user) else self.user
                text = content if parts is self.user else (system, content)
                segments.append((self._ids(tokenizer, parts, text), False))
                first_user = False
            elif role == "assistant":
                segments.append((self._ids(tokenizer, self.assistant, content), True))
                if self.after_assistant:
                    segments.append((self._ids(tokenizer, self.after_assistant, ""), False))
            else:
                raise UserError(
                    f"template {self.name}: unsupported role '{role}' (user and assistant turns only; use data.system)"
                )
        return [(ids, trained) for ids, trained in segments if ids]

    def prompt_ids(self, tokenizer, messages: list[dict], system: str | None = None) -> list[int]:
        """Ids of a conversation that ends with a user turn, ready for the assistant's answer."""
        return [i for ids, _ in self.segments(tokenizer, messages, system) for i in ids]

    def stop_ids(self, tokenizer) -> list[int]:
        """Where generation stops: the EOS, and the end-of-turn token the assistant's turn ends with."""
        last = self.assistant[-1]
        ids = [eos_id(tokenizer)]
        if isinstance(last, Token) and last is not EOS:
            ids.append(special_id(tokenizer, last.text, self.name))
        return sorted(set(ids))

    def answer_end_id(self, tokenizer) -> int:
        """The token every trained answer ends with: what a served model must stop at."""
        last = self.assistant[-1]
        return special_id(tokenizer, last.text, self.name) if isinstance(last, Token) and last is not EOS else eos_id(tokenizer)

    def _ids(self, tokenizer, parts: tuple, content) -> list[int]:
        system, content = content if isinstance(content, tuple) else (None, content)
        ids: list[int] = []
        for part in parts:
            if part is EOS:
                ids.append(eos_id(tokenizer))
            elif isinstance(part, Token):
                ids.append(special_id(tokenizer, part.text, self.name))
            else:
                text = part.replace("{system}", system or "").replace("{content}", content)
                ids += text_ids(tokenizer, text) if text else []
        return ids

    def chat_template(self, tokenizer, default_system: str | None = None) -> str:
        """The same format as a Jinja chat template (transformers' and llama.cpp's), so that a merged or exported
        model is prompted as it was trained; `default_system` stands where the conversation brings none."""
        system = jinja_literal(default_system) if default_system else "none"
        return "".join(
            [
                "{%- if messages and messages[0]['role'] == 'system' -%}",
                "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}",
                f"{{%- else -%}}{{%- set system = {system} -%}}{{%- set turns = messages -%}}{{%- endif -%}}",
                _jinja(self.prefix),
                f"{{%- if system -%}}{_jinja(self.system, 'system')}{{%- endif -%}}" if not self.system_in_first_user else "",
                "{%- for message in turns -%}{%- if message['role'] == 'user' -%}",
                f"{{%- if loop.first and system -%}}{_jinja(self.system_in_first_user)}{{%- else -%}}"
                if self.system_in_first_user
                else "",
                _jinja(self.user),
                "{%- endif -%}" if self.system_in_first_user else "",
                f"{{%- elif message['role'] == 'assistant' -%}}{_jinja(self.assistant)}{_jinja(self.after_assistant)}",
                "{%- endif -%}{%- endfor -%}",
            ]
        )


def part_pieces(parts: tuple) -> list[tuple[str, str]]:
    """A format's parts as (kind, text) pieces, for writing the format in another template language: ("text",
    literal), ("special", token text), ("eos", ""), and ("content", "") / ("system", "") where the turn's text or
    the system prompt goes."""
    pieces = []
    for part in parts:
        if part is EOS:
            pieces.append(("eos", ""))
        elif isinstance(part, Token):
            pieces.append(("special", part.text))
        else:
            for index, text in enumerate(part.replace("{system}", "\0system\0").replace("{content}", "\0content\0").split("\0")):
                if index % 2:
                    pieces.append((text, ""))
                elif text:
                    pieces.append(("text", text))
    return pieces


def _jinja(parts: tuple, content: str = "message['content']") -> str:
    """A format's parts as one Jinja expression; `{content}` becomes the variable `content` names (the turn's text,
    or the system prompt in the system part)."""
    variables = {"eos": "eos_token", "content": content, "system": "system"}
    pieces = [variables[kind] if kind in variables else jinja_literal(text) for kind, text in part_pieces(parts)]
    return "{{- " + " + ".join(pieces) + " -}}" if pieces else ""


PLAIN = FormatTemplate(
    name="plain",  # the tutorials' format
    system=("{content}\n\n",),
    user=("Human: {content}\n\nAssistant: ",),
    assistant=("{content}", EOS),
)
LLAMA2 = FormatTemplate(
    name="llama2",  # <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {answer} </s>
    user=(Token("<s>"), "[INST] {content} [/INST]"),
    system_in_first_user=(Token("<s>"), "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{content} [/INST]"),
    assistant=(" {content} ", EOS),
)
LLAMA3 = FormatTemplate(
    name="llama3",
    prefix=(Token("<|begin_of_text|>"),),
    system=(Token("<|start_header_id|>"), "system", Token("<|end_header_id|>"), "\n\n{content}", Token("<|eot_id|>")),
    user=(
        Token("<|start_header_id|>"),
        "user",
        Token("<|end_header_id|>"),
        "\n\n{content}",
        Token("<|eot_id|>"),
        Token("<|start_header_id|>"),
        "assistant",
        Token("<|end_header_id|>"),
        "\n\n",
    ),
    assistant=("{content}", Token("<|eot_id|>")),
)
CHATGLM3 = FormatTemplate(
    # as the ChatGLM3 tutorial builds a sample: build_chat_input(query) = [gMASK] sop <|user|> encode("\n")
    # encode(query) <|assistant|>, then encode("\n" + response) and the EOS; a system turn is <|system|> encode("\n")
    # encode(system), as build_chat_input puts it (sentencepiece adds its dummy prefix to every encoded part)
    name="chatglm3",
    prefix=(Token("[gMASK]"), Token("sop")),
    system=(Token("<|system|>"), "\n", "{content}"),
    user=(Token("<|user|>"), "\n", "{content}", Token("<|assistant|>")),
    assistant=("\n{content}", EOS),
)
CHATML = FormatTemplate(
    name="chatml",  # Qwen
    system=(Token("<|im_start|>"), "system\n{content}", Token("<|im_end|>"), "\n"),
    user=(Token("<|im_start|>"), "user\n{content}", Token("<|im_end|>"), "\n", Token("<|im_start|>"), "assistant\n"),
    assistant=("{content}", Token("<|im_end|>")),
    after_assistant=("\n",),
)
FORMATS = {t.name: t for t in (PLAIN, LLAMA2, LLAMA3, CHATGLM3, CHATML)}
TEMPLATES = ("plain", "native", "llama2", "llama3", "chatglm3", "chatml")


def family_template(tokenizer, model_type: str | None) -> str | None:
    """The format of the model's family, for a tokenizer without its own chat template."""
    vocab = tokenizer.get_vocab()
    if model_type == "chatglm" or "[gMASK]" in vocab:
        return "chatglm3"
    if "<|eot_id|>" in vocab and "<|start_header_id|>" in vocab:
        return "llama3"
    if "<|im_start|>" in vocab and model_type in ("qwen", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe"):
        return "chatml"
    if model_type == "llama" and tokenizer.eos_token == "</s>":
        return "llama2"
    return None


def resolve_template_name(name: str, tokenizer, model_type: str | None = None) -> str:
    """`auto`: the tokenizer's own chat template when it has one, else the family's format, else `plain`."""
    if name == "auto":
        if getattr(tokenizer, "chat_template", None):
            return "native"
        return family_template(tokenizer, model_type) or "plain"
    if name == "native" and not getattr(tokenizer, "chat_template", None):
        raise UserError("data.template is 'native' but the tokenizer has no chat template; use 'plain' or 'auto'")
    if name not in TEMPLATES:
        raise UserError(f"unknown template '{name}'; valid templates: auto, {', '.join(TEMPLATES)}")
    return name


def get_template(name: str, tokenizer, model_type: str | None = None):
    name = resolve_template_name(name, tokenizer, model_type)
    return NativeTemplate() if name == "native" else FORMATS[name]
