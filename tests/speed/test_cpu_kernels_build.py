"""Building the C kernels: once per CPU, then loaded from the cache; a failing compiler is a one-line error that
leaves nothing behind."""

import platform

import pytest

from llm_tuning.errors import UserError
from llm_tuning.speed.cpu_kernels_build import blas_sgemm, compile_flags, kernels, library_path


@pytest.fixture
def fresh_build(tmp_path, monkeypatch):
    """An empty cache and no library loaded yet in this process."""
    monkeypatch.setenv("LLM_TUNING_CACHE", str(tmp_path))
    kernels.cache_clear()
    yield tmp_path / "kernels"
    kernels.cache_clear()


def test_built_once_per_cpu_then_loaded_from_the_cache(fresh_build):
    kernels()
    (library,) = fresh_build.glob("cpu_kernels-*.so")
    built = library.stat().st_mtime_ns
    kernels.cache_clear()
    kernels()
    assert [p.name for p in fresh_build.iterdir()] == [library.name]  # no second build, no leftovers
    assert library.stat().st_mtime_ns == built


def test_a_failing_compiler_is_one_line_and_leaves_nothing(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", "false")  # found on PATH, fails every build
    with pytest.raises(UserError, match=r"^config key 'train.cpu_kernels': building cpu_kernels.c with .*false failed"):
        kernels()
    assert not fresh_build.exists() or not any(fresh_build.iterdir())


def test_numpys_openblas_is_found_for_packed_attention():
    assert blas_sgemm()  # numpy's wheels bring OpenBLAS with 64-bit integers; the attention kernel multiplies with it


def test_an_instruction_set_limit_builds_a_library_of_its_own(monkeypatch):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    native = compile_flags()
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")  # as under the AVX2 limits of docs/speed.md
    limited = compile_flags()
    if platform.machine() == "x86_64":
        assert limited == [*native, "-mno-avx512f"]
    assert library_path("cc", limited) != library_path("cc", native) or limited == native
