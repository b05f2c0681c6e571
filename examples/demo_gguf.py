"""The demo run exported to GGUF (f16) and answered by llama.cpp, beside transformers' answers on the same prompts.
Run `make demo` first (it trains runs/demo), then `make demo-gguf` (or `python examples/demo_gguf.py`)."""

import sys
import time
from pathlib import Path

from llm_tuning.cli import quiet_libraries

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "runs" / "demo"
GGUF = ROOT / "runs" / "demo.gguf"
PROMPTS = ROOT / "examples" / "data" / "demo_prompts.txt"
NEW_TOKENS = 48


def main() -> int:
    quiet_libraries()
    # after quiet_libraries: bitsandbytes, loaded with these, warns on import on CPUs with AVX512-BF16
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_tuning.data.templates import get_template
    from llm_tuning.export import verify
    from llm_tuning.export.gguf import export_gguf
    from llm_tuning.generation import read_prompts
    from llm_tuning.merging import merge

    if not (RUN / "config.yaml").is_file():
        print(f"no demo run in {RUN}: run `make demo` first", file=sys.stderr)
        return 2
    started = time.time()
    export_gguf(GGUF, adapter=RUN, quant="f16", overwrite=True, ollama=True)
    merged = merge(RUN, ROOT / "runs" / "demo-merged", overwrite=True)
    # transformers on the weights the f16 file holds, computed in float32: greedy answers comparable token for token
    model = verify.rounded_like(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval(), torch.float16)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    template = get_template("native", tokenizer)
    llm = verify.load_gguf(GGUF)
    same = 0
    prompts = read_prompts(PROMPTS)
    for prompt in prompts:
        conversation = [{"role": "user", "content": prompt}]
        ids = verify.chat_prompt_ids(llm, conversation)  # llama.cpp's own rendering of the file's chat template
        ours = verify.llama_cpp_greedy(llm, ids, NEW_TOKENS)
        theirs = verify.transformers_greedy(
            model, template.prompt_ids(tokenizer, conversation), NEW_TOKENS, template.stop_ids(tokenizer)
        )
        same += ours == theirs
        print(f"\n### {prompt}\n  llama.cpp:    {_text(tokenizer, ours)}\n  transformers: {_text(tokenizer, theirs)}")
    print(
        f"\n{same} of {len(prompts)} answers identical token for token; {GGUF} ({GGUF.stat().st_size / 2**20:.0f} MiB) "
        f"and its Modelfile written in {time.time() - started:.0f} s"
    )
    return 0


def _text(tokenizer, ids) -> str:
    return " ".join(tokenizer.decode(ids, skip_special_tokens=True).split())


if __name__ == "__main__":
    raise SystemExit(main())
