"""bitsandbytes, imported by peft in every command, compiles its kernels when they first run, not as it loads."""

import subprocess
import sys

from llm_tuning.speed.startup import compile_on_first_call

# what `import peft` loads when bitsandbytes calls torch.compile as it is imported: Inductor's compiler
IMPORTED_ONLY_TO_COMPILE = "torch._inductor.compile_fx"


def modules_after(code: str) -> set[str]:
    """The modules loaded after `code` runs in a new interpreter."""
    script = f"{code}\nimport sys\nprint(' '.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    return set(result.stdout.split())


def test_peft_imported_after_the_package_loads_no_compiler():
    loaded = modules_after("import llm_tuning, peft")
    compiler_loaded = IMPORTED_ONLY_TO_COMPILE in loaded
    assert "bitsandbytes" in loaded and not compiler_loaded


def test_a_deferred_function_compiles_once_on_its_first_call_with_its_options():
    compiled = []

    def compile_now(function, **options):
        compiled.append((function.__name__, options))
        return lambda x: function(x) * 10  # a "compiled" function that can be told apart

    def double(x):
        return 2 * x

    direct = compile_on_first_call(compile_now, double, dynamic=False)
    decorated = compile_on_first_call(compile_now, fullgraph=True)(double)
    assert compiled == [] and direct.__name__ == "double"
    assert [direct(1), direct(2), decorated(3)] == [20, 40, 60]
    assert compiled == [("double", {"dynamic": False}), ("double", {"fullgraph": True})]
