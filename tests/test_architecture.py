"""The architecture rules of the README, checked on the source: no import cycle anywhere in ``procure/``
(imports inside functions included), data flows one way between the packages, and no long pipeline functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "procure"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PKG.rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """module -> the procure modules it imports anywhere in its body (``from pkg import sub`` counts as the
    submodule when ``sub`` is one). Parent packages imported implicitly are not edges."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, tree in mods.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module for a in node.names
                ]
            else:
                continue
            graph[name].update(t for t in targets if t in mods and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_procure():
    assert find_cycle(import_graph()) is None


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        (
            "procure.valuation",
            ("procure.llm", "procure.market", "procure.pipeline", "procure.tasks", "procure.annotations"),
        ),
        (
            "procure.market",
            ("procure.llm", "procure.valuation", "procure.pipeline", "procure.tasks", "procure.annotations"),
        ),
        ("procure.llm", ("procure.market", "procure.pipeline", "procure.annotations")),
        ("procure.tasks", ("procure.market", "procure.pipeline", "procure.valuation", "procure.annotations")),
        # procure.annotations (`procure value` on LLM rows) composes valuation, llm and tasks, like the pipeline
        ("procure.annotations", ("procure.market", "procure.pipeline")),
    ],
)
def test_data_flows_one_way(package, forbidden):
    """valuation and market know nothing of LLMs; llm knows nothing of markets; only pipeline composes."""
    bad = {
        (m, t)
        for m, targets in import_graph().items()
        if m.startswith(package)
        for t in targets
        if t.startswith(forbidden)
    }
    assert not bad


def test_pipeline_protocols_import_nothing_else_of_the_pipeline():
    assert not {t for t in import_graph()["procure.pipeline.protocols"] if t.startswith("procure.pipeline")}


def test_no_pipeline_function_longer_than_80_lines():
    long = [
        f"{p.name}:{f.name} ({f.end_lineno - f.lineno + 1} lines)"
        for p in sorted((PKG / "pipeline").glob("*.py"))
        for f in ast.walk(ast.parse(p.read_text()))
        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef) and f.end_lineno - f.lineno + 1 > 80
    ]
    assert not long
