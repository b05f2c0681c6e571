"""The package's layout keeps its promises: no import circle, the library imported lazily only where that is the
point (the command line and the package's public names), small modules, and a fast `--help`."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import llm_tuning

PACKAGE = Path(llm_tuning.__file__).parent
# where importing our own modules inside functions is the point: `import llm_tuning` and `llm-tuning --help`
# stay fast, and the command restarts on another allocator before torch loads
LAZY_BY_DESIGN = ("llm_tuning", "llm_tuning.cli", "llm_tuning.cli.commands")
MAX_MODULE_LINES = 300


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, ast.stmt, bool]]:
    """(imported llm_tuning module, the statement, inside a function?) for every import of ours in a module."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                target = f"{base}.{alias.name}"
                target = target if target in known else base
                if target in known:
                    found.append((target, node, id(node) in in_function))
        elif isinstance(node, ast.Import):
            found += [(a.name, node, id(node) in in_function) for a in node.names if a.name in known]
    return found


def test_import_graph_has_no_circle():
    known = modules()
    graph = {name: {target for target, _, _ in imports_of(name, path, known)} - {name} for name, path in known.items()}
    # Tarjan's strongly connected components: any component of more than one module is a circle
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"


def test_our_modules_are_imported_inside_functions_only_where_that_is_the_point():
    known = modules()
    late = [
        f"{name}: {ast.unparse(node)}"
        for name, path in known.items()
        if name not in LAZY_BY_DESIGN
        for _, node, inside in imports_of(name, path, known)
        if inside
    ]
    assert not late, late


def test_other_late_imports_say_why():
    """An import inside a function (a slow or optional library) carries a comment saying why."""
    unexplained = []
    for name, path in modules().items():
        if name in LAZY_BY_DESIGN:
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        for function in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and "#" not in lines[node.lineno - 1] + lines[node.lineno - 2]:
                    unexplained.append(f"{path.name}:{node.lineno}")
    assert not unexplained, unexplained


def test_package_folders_only_describe_themselves():
    """A package's __init__ imports nothing (but the root's public names and the command line's entry point), so
    importing one module never drags its neighbours in."""
    known = modules()
    for name, path in known.items():
        if path.name == "__init__.py" and name not in LAZY_BY_DESIGN:
            assert not imports_of(name, path, known), name


def test_modules_stay_small():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, long


def test_help_does_not_import_torch():
    code = (
        "import sys\nfrom llm_tuning.cli import main\n"
        "for argv in (['--help'], ['train', '--help'], ['merge', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False False"


@pytest.mark.parametrize("name", llm_tuning.__all__)
def test_submodules_never_replace_a_public_function(name):
    """Importing every module (as the command line and the tests do) leaves `llm_tuning.X` the function itself."""
    import importlib

    for module in modules():
        if not module.endswith("__main__"):  # that one runs the command
            importlib.import_module(module)
    value = getattr(llm_tuning, name)
    assert not isinstance(value, type(llm_tuning)), f"llm_tuning.{name} became the module {value.__name__}"
    assert value is getattr(importlib.import_module(llm_tuning.PUBLIC[name]), name)
