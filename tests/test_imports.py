"""Importing the package: `resnet` gives every public name from its module (at once in a library,
where first used in our binaries), and the modules import one another without a circle."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import resnet

PACKAGE = Path(resnet.__file__).resolve().parent


def test_the_package_gives_every_public_name_from_its_module():
    import resnet.layers

    core = [
        "ResNet",
        "ResidualStage",
        "available_configs",
        "available_experiments",
        "available_weights",
        "build",
        "config_path",
        "count_macs",
        "fold_batch_norm",
        "parse",
        "register",
        "weights_info",
    ]
    assert resnet.__all__ == [*core, *resnet.layers.__all__]
    for name in resnet.__all__:
        home = importlib.import_module(resnet._MODULES.get(name, "resnet.layers"))
        assert getattr(resnet, name) is getattr(home, name) and name in dir(resnet)
    star = {}
    exec("from resnet import *", star)
    assert sorted(set(star) - {"__builtins__"}) == sorted(resnet.__all__)
    with pytest.raises(AttributeError, match="module 'resnet' has no attribute 'missing'"):
        resnet.missing  # noqa: B018


LOAD_IN_A_NEW_PROCESS = """
import sys
import keras
import resnet
model = keras.models.load_model(sys.argv[1])
print(type(model).__name__)
"""


@pytest.mark.slow  # a new process per case
def test_a_new_process_that_imports_resnet_loads_a_keras_file(tmp_path):
    """`import resnet` registers the classes with Keras: nothing else need be used first."""
    resnet.build("cifar/resnet20").save(tmp_path / "m.keras")
    result = subprocess.run(
        [sys.executable, "-c", LOAD_IN_A_NEW_PROCESS, str(tmp_path / "m.keras")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ResNet", result.stderr[-2000:]


def _modules() -> dict[str, Path]:
    """Module name -> file, for every module of the package (a package is its `__init__.py`)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        isinstance(test, ast.Name)
        and test.id == "TYPE_CHECKING"
        or isinstance(test, ast.Attribute)
        and test.attr == "TYPE_CHECKING"
    )


def _imported(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules `module` imports when it runs: `import` statements anywhere (at the top
    and inside functions, not under `if TYPE_CHECKING:`) and module names given as strings
    (`importlib.import_module(...)`, a lazy package's table of where its names live).

    Importing `a.b.c` from outside the package `a.b` runs `a/b/__init__.py` first: that counts as
    importing `a.b` too. From inside `a.b` it does not: a package's `__init__` and its own
    submodules import one another without a circle at run time."""
    names = set()
    pending = [ast.parse(path.read_text(), str(path))]
    while pending:
        node = pending.pop()
        if _type_checking_only(node):
            pending.extend(node.orelse)
            continue
        pending.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}:{node.lineno}: a relative import; the package imports by absolute names"
            names.update(
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                for alias in node.names
            )
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value:
            names.add(node.value)
    imported = names & set(modules)
    for name in list(imported):
        parts = name.split(".")
        entered = (".".join(parts[:i]) for i in range(1, len(parts)))
        imported.update(p for p in entered if not (module + ".").startswith(p + "."))
    return imported - {module}


def _cycle(component: set[str], graph: dict[str, set[str]]) -> list[str]:
    """One circle through the strongly connected `component`, first module repeated at the end."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        node = frontier.pop(0)
        for target in sorted(graph[node] & component):
            if target == start:
                return [*paths[node], start]
            if target not in paths:
                paths[target] = [*paths[node], target]
                frontier.append(target)
    raise AssertionError(f"{component} is not strongly connected")


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {module: _imported(module, path, modules) for module, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """A circle through each strongly connected component of more than one module."""
    reach = {}
    for start in graph:
        seen, pending = set(), [start]
        while pending:
            for target in graph[pending.pop()] - seen:
                seen.add(target)
                pending.append(target)
        reach[start] = seen
    components = {frozenset(m for m in reach[n] if n in reach[m]) | {n} for n in graph}
    return sorted(_cycle(set(c), graph) for c in components if len(c) > 1)


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    assert graph["resnet.training.trainer"] >= {"resnet.model", "resnet.training.finetune"}
    assert "resnet.interop" in graph["resnet.training.finetune"]  # through its `__init__`
    assert {"resnet.model", "resnet.layers"} <= graph["resnet"]  # the lazy table
    found = circles(graph)
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_a_circle_is_found_and_named():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert circles(graph) == [["a", "b", "c", "a"]]
