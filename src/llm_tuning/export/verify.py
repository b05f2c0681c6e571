"""Does llama.cpp answer as transformers does? Greedy answers from a GGUF file through llama.cpp, and from a
transformers model on the same prompt ids, token for token; and the chat prompt llama.cpp renders from the file's
own template, tokenised by llama.cpp. Used by the tests, `make demo-gguf` and benchmarks/gguf_export.py."""

from __future__ import annotations

import numpy as np
import torch

from .llama_cpp import import_llama_cpp


def load_gguf(path, context: int = 2048, threads: int | None = None):
    """llama.cpp's model (through llama-cpp-python), quiet, on the CPU, with `threads` (default: torch's count)."""
    threads = threads or torch.get_num_threads()
    return import_llama_cpp().Llama(
        model_path=str(path), n_ctx=context, verbose=False, n_threads=threads, n_threads_batch=threads
    )


def llama_cpp_greedy(llm, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """llama.cpp's greedy continuation of `prompt_ids`, up to and including the first end-of-generation token."""
    llm.reset()
    answer = []
    for token in llm.generate(prompt_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        answer.append(token)
        if llm.token_eos() == token or is_end_of_generation(llm, token) or len(answer) == max_new_tokens:
            break
    return answer


def is_end_of_generation(llm, token: int) -> bool:
    llama_cpp = import_llama_cpp()
    return bool(llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm._model.model), token))


def llama_cpp_prompt_logits(llm, prompt_ids: list[int]) -> torch.Tensor:
    """llama.cpp's logits for the next token after `prompt_ids`."""
    llm.reset()
    llm.eval(prompt_ids)
    # the last position's logits, read from llama.cpp's context (llm.scores keeps them only with logits_all)
    return torch.tensor(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy())


def chat_prompt_ids(llm, messages: list[dict]) -> list[int]:
    """The prompt llama.cpp builds for a chat: the file's own chat template rendered, tokenised by llama.cpp."""
    llama_cpp = import_llama_cpp()
    template = llm.metadata["tokenizer.chat_template"]
    formatter = llama_cpp.llama_chat_format.Jinja2ChatFormatter(
        template=template,
        eos_token=llm._model.token_get_text(llm.token_eos()),
        bos_token=llm._model.token_get_text(llm.token_bos()),
        add_generation_prompt=True,
    )
    text = formatter(messages=messages).prompt
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def transformers_greedy(model, prompt_ids: list[int], max_new_tokens: int, stop_ids: list[int]) -> list[int]:
    """transformers' greedy continuation, up to and including the first stop token."""
    with torch.no_grad():
        output = model.generate(
            torch.tensor([prompt_ids]),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stop_ids,
            pad_token_id=stop_ids[0],
        )
    return output[0, len(prompt_ids) :].tolist()


def transformers_prompt_logits(model, prompt_ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([prompt_ids])).logits[0, -1].float()


def rounded_like(model, dtype: torch.dtype):
    """`model` with every weight rounded to `dtype` and back to float32: what a GGUF of that type holds, computed in
    float32, so that greedy answers can be compared token for token."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.to(dtype).float())
    return model


def same_tokens(a: list[int], b: list[int]) -> float:
    """The share of positions where two answers agree, over the longer one."""
    if not a and not b:
        return 1.0
    return sum(x == y for x, y in zip(a, b)) / max(len(a), len(b))
