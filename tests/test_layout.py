"""The package's shape: imports run downward (command -> stage -> shared leaf), no cycles, no borrowed private names.

Commands are the modules users run (`python -m claire.<command>`); stages are the subpackages; shared leaves are the
other modules directly under claire/. A stage uses another stage only through the names its `__init__` exports.
Every import counts, those inside functions too: a lazy import is still a dependency.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "claire"
COMMANDS = {"train", "evaluate", "generate", "report", "reproduce", "chat", "serve"}
STAGES = {"training", "teacher", "causal", "evaluation", "reporting", "sweep", "serving"}


def module_name(path: Path) -> str:
    """claire/evaluation/tasks/gpqa/utils.py -> claire.evaluation.tasks.gpqa.utils."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def kind(module: str) -> str:
    """'package', 'command', 'leaf' or 'stage:<name>'."""
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    if parts[1] in STAGES:
        return f"stage:{parts[1]}"
    return "command" if parts[1] in COMMANDS else "leaf"


def imports(module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every claire import in a module, lazy ones included."""
    tree = ast.parse(MODULES[module].read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "claire"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("claire"):
            found.append((node.module, [a.name for a in node.names], node.lineno))
    return found


def edges(module: str) -> set[str]:
    """The claire modules a module depends on (`from claire.x import y` depends on claire.x.y when that is a module)."""
    found = set()
    for target, names, _ in imports(module):
        submodules = {f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES}
        found |= submodules or {target}
        if set(names) - {s.rsplit(".", 1)[1] for s in submodules}:
            found.add(target)
    return found - {module}


def test_the_package_has_its_stages_and_commands():
    assert {m.split(".")[1] for m in MODULES if kind(m).startswith("stage")} == STAGES
    assert {m.split(".")[1] for m in MODULES if kind(m) == "command"} == COMMANDS


def upward_imports() -> list[str]:
    """Every import that breaks the command -> stage -> leaf order, in words."""
    wrong = []
    for module in MODULES:
        mine = kind(module)
        for target in edges(module):
            theirs = kind(target)
            if theirs == "command" and mine != "command":
                wrong.append(f"{module} imports the command {target}")
            elif mine == "leaf" and theirs.startswith("stage"):
                wrong.append(f"the shared leaf {module} imports the stage module {target}")
            elif mine.startswith("stage") and theirs.startswith("stage") and theirs != mine:
                stage_package = "claire." + theirs.split(":")[1]
                if target != stage_package:
                    wrong.append(f"{module} reaches into another stage's internals: {target}")
    return wrong


def test_imports_run_downward():
    assert upward_imports() == []


def test_no_private_name_crosses_a_module():
    borrowed = [
        f"{module}:{line} takes {name} from {target}"
        for module in MODULES
        for target, names, line in imports(module)
        for name in names
        if name.startswith("_") and target != module
    ]
    assert borrowed == []


def test_no_import_cycles():
    graph = {m: edges(m) & set(MODULES) for m in MODULES}
    graph = {m: {t for t in targets if t != "claire"} for m, targets in graph.items()}  # the package root is a leaf
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from claire.training import sft", "claire.evaluation.x reaches into another stage's internals"),
        ("from claire.generate import run", "claire.evaluation.x imports the command claire.generate"),
    ],
)
def test_the_rules_catch_a_wrong_import(tmp_path, monkeypatch, source, expected):
    fake = tmp_path / "x.py"
    fake.write_text(source + "\n")
    monkeypatch.setitem(MODULES, "claire.evaluation.x", fake)
    assert any(found.startswith(expected) for found in upward_imports())
