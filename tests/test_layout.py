"""The package's shape: no import cycles (function-local imports counted), short modules, CLI defaults = library's."""
import argparse
import ast
import dataclasses
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "jcw"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _import_graph() -> dict[str, set[str]]:
    """module -> jcw modules it imports anywhere in its body (module level or inside functions)."""
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target not in ("jcw", name) and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_between_modules_or_units():
    graph = _import_graph()
    assert _cycles(graph) == []
    unit = lambda m: ".".join(m.split(".")[:2])
    units: dict[str, set[str]] = defaultdict(set)
    for a, targets in graph.items():
        units[unit(a)].update(unit(b) for b in targets if unit(b) != unit(a))
    assert _cycles(units) == []


def test_library_modules_import_jcw_at_module_level():
    """A function-local import of a jcw module exists only to dodge a cycle; only the CLI defers them (start-up)."""
    offenders = []
    for name, path in _modules().items():
        if name == "jcw" or name.startswith("jcw.cli"):
            continue
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jcw"):
                        offenders.append(f"{name}.{fn.name}: {node.module}")
    assert offenders == []


def test_no_module_over_400_lines():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > 400}
    assert long == {}


def _cli_defaults(*argv: str) -> dict:
    from jcw.cli import build_parser

    return vars(build_parser().parse_args(list(argv)))


@pytest.mark.parametrize("argv,config,renamed", [
    (["search", "--device", "pixel4", "--latency", "1ms"], "jcw.search.run:SearchConfig",
     {"latency": None, "no_export": None, "budgets_ms": None, "export": None}),
    (["supernet", "train"], "jcw.supernet.train:TrainConfig", {}),
    (["supernet", "train"], "jcw.supernet.supernet:SupernetConfig", {}),
    (["predictor", "fit"], "jcw.predictor.fit:PredictorFitConfig", {}),
    (["finetune", "x.pt"], "jcw.finetune:FinetuneConfig", {}),
])
def test_every_cli_default_equals_the_librarys(argv, config, renamed):
    import importlib

    module, cls = config.split(":")
    fields = {f.name: f.default for f in dataclasses.fields(getattr(importlib.import_module(module), cls))
              if f.default is not dataclasses.MISSING}
    args = _cli_defaults(*argv)
    shared = {k for k in fields if k in args and k not in renamed}
    assert len(shared) >= 3
    assert {k: args[k] for k in shared} == {k: fields[k] for k in shared}


def test_every_subpackage_is_installed():
    """pyproject lists its packages one by one: a new folder left out works in a clone and breaks once installed."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found - listed == set()


def test_every_cli_choice_is_configs():
    """An option with fixed values offers exactly config.CHOICES' values, in every command that has it."""
    from jcw.cli import build_parser
    from jcw.config import CHOICES

    seen = set()
    stack = [build_parser()]
    while stack:
        parser = stack.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
            elif action.dest in CHOICES and action.choices is not None:
                assert tuple(action.choices) == CHOICES[action.dest], (parser.prog, action.dest)
                seen.add(action.dest)
    assert seen == set(CHOICES)
