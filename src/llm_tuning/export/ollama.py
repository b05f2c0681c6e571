"""An Ollama Modelfile beside an exported GGUF: FROM the file, a TEMPLATE in Ollama's Go-template syntax that renders
the training prompt, PARAMETER stop for every stop token, and SYSTEM when the run had a system prompt.

Ollama cannot run Jinja, so the template is written from the run's format: a family format (plain, llama2, llama3,
chatglm3, chatml) directly, and a tokenizer's own template through the family format that renders the same
prompts (SmolLM2's own is ChatML with a default system prompt). Ollama is not installable here: the Modelfile is
tested against a golden file, not by Ollama itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.templates import FORMATS, FormatTemplate, part_pieces
from ..errors import UserError
from ..files import write_file_whole

MODELFILE = "Modelfile"
MARK = "\u241f"  # stands for the system prompt while a probe is rendered
PROBES = (
    [{"role": "user", "content": "Hello there."}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"}],
)


def modelfile(gguf_name: str, template, tokenizer, system: str | None) -> str:
    """The Modelfile's text for a GGUF named `gguf_name` (beside it) trained with `template`."""
    fmt, default_system = as_format(template, tokenizer, system)
    stops = sorted({tokenizer.convert_ids_to_tokens(i) for i in template.stop_ids(tokenizer)})
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{go_template(fmt, tokenizer)}"""']
    lines += [f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}" for stop in stops]
    if default_system:
        lines.append(f'SYSTEM """{default_system}"""')
    return "\n".join(lines) + "\n"


def as_format(template, tokenizer, system: str | None) -> tuple[FormatTemplate, str | None]:
    """The family format that renders what `template` does, and the system prompt it adds by default."""
    if isinstance(template, FormatTemplate):
        return template, system
    for fmt in FORMATS.values():
        try:
            default = system or _default_system(fmt, template, tokenizer)
            if all(fmt.prompt_ids(tokenizer, p, default) == template.prompt_ids(tokenizer, p, system) for p in PROBES):
                return fmt, default
        except UserError:  # the family's special tokens are not in this tokenizer
            continue
    raise UserError(
        "--ollama: the model's own chat template matches none of plain, llama2, llama3, chatglm3, chatml, so it cannot "
        "be written in Ollama's template syntax; train with one of those as data.template"
    )


def _default_system(fmt: FormatTemplate, template, tokenizer) -> str | None:
    """The system prompt `template` adds when a conversation has none, read off its rendering with `fmt`'s frame."""
    framed = tokenizer.decode(fmt.prompt_ids(tokenizer, PROBES[0], MARK))
    if MARK not in framed:
        return None
    before, after = framed.split(MARK)
    rendered = tokenizer.decode(template.prompt_ids(tokenizer, PROBES[0]))
    if rendered.startswith(before) and rendered.endswith(after) and len(rendered) > len(before) + len(after):
        return rendered[len(before) : len(rendered) - len(after)]
    return None


def go_template(fmt: FormatTemplate, tokenizer) -> str:
    """`fmt` in Ollama's template syntax: .System, then .Messages with their .Role and .Content."""
    user = _go(fmt.user, tokenizer)
    first_user = _go(fmt.system_in_first_user, tokenizer, content=".Content", system="$.System")
    if fmt.system_in_first_user:  # Llama 2: the system prompt inside the first user turn, when there is one
        user = f"{{{{- if and $first $.System }}}}{first_user}{{{{- else }}}}{user}{{{{- end }}}}{{{{- $first = false }}}}"
    return "".join(
        [
            _go(fmt.prefix, tokenizer),
            ""
            if fmt.system_in_first_user
            else f"{{{{- if .System }}}}{_go(fmt.system, tokenizer, content='.System')}{{{{- end }}}}",
            "{{- $first := true }}" if fmt.system_in_first_user else "",
            f'{{{{- range .Messages }}}}{{{{- if eq .Role "user" }}}}{user}',
            f'{{{{- else if eq .Role "assistant" }}}}{_go(fmt.assistant, tokenizer)}{_go(fmt.after_assistant, tokenizer)}',
            "{{- end }}{{- end }}",
        ]
    )


def _go(parts: tuple, tokenizer, content: str = ".Content", system: str = "$.System") -> str:
    """A format's parts as Go-template actions: text as string literals, special tokens and the EOS as their text."""
    variables = {"content": content, "system": system}
    literals = {"eos": lambda text: tokenizer.eos_token, "special": lambda text: text, "text": lambda text: text}
    pieces = [
        variables[kind] if kind in variables else json.dumps(literals[kind](text), ensure_ascii=False)
        for kind, text in part_pieces(parts)
    ]
    return "".join(f"{{{{ {piece} }}}}" for piece in pieces)


def write_modelfile(gguf: Path, template, tokenizer, system: str | None) -> Path:
    path = gguf.parent / MODELFILE
    write_file_whole(path, modelfile(gguf.name, template, tokenizer, system))
    return path
