"""Token ids as templates need them: text without the tokenizer's automatic special tokens, the EOS by id, a
family's special tokens by id, with a one-line error when the tokenizer lacks one."""

from __future__ import annotations

from ..errors import UserError

Segment = tuple[list[int], bool]  # token ids, trained?


def text_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no EOS token; a model trained without one never learns to stop")
    return tokenizer.eos_token_id


def special_id(tokenizer, token: str, template: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise UserError(
            f"template {template} needs the special token {token!r}, which this tokenizer lacks; pick another data.template"
        )
    return token_id
