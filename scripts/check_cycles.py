"""Fail when the import graph of vsm_edge has a cycle, between modules or between rooms.

Every import counts: at module level, inside functions (lazy imports) and
under ``if TYPE_CHECKING:``, because each is a dependency a reader has to
follow. A *room* is a package inside a part (``vsm_edge.agent.vsm``,
``vsm_edge.agent.web``, ...); a cycle between rooms is reported even when no
two modules import each other.

Run from the tree of symlinks scripts/test.sh builds (``.typecheck/``), where
the import names resolve to the folders::

    (cd .typecheck && python ../scripts/check_cycles.py)
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping

import grimp

PARTS = ("vsm_edge.agent", "vsm_edge.sync", "vsm_edge.models", "vsm_edge.bridge")


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components with more than one node (or a self-loop)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    found.append(sorted(component))
    return found


def room_of(module: str) -> str:
    """``vsm_edge.agent.web.routes`` -> ``vsm_edge.agent.web``; a part's own modules stay."""
    for part in PARTS:
        if module == part or not module.startswith(part + "."):
            continue
        rest = module[len(part) + 1 :].split(".")
        return f"{part}.{rest[0]}" if len(rest) > 1 else module
    return module


def main() -> int:
    graph = grimp.build_graph(*PARTS, cache_dir=None)
    modules = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    rooms: dict[str, set[str]] = {}
    for module, imported in modules.items():
        source = room_of(module)
        for target in imported:
            if module.startswith(target + "."):
                continue  # a module importing its own package (__init__): not an edge
            if room_of(target) != source:
                rooms.setdefault(source, set()).add(room_of(target))
    failed = False
    for what, g in (("modules", modules), ("rooms", rooms)):
        for component in strongly_connected(g):
            failed = True
            print(f"import cycle between {what}: {' <-> '.join(component)}")
    if not failed:
        print(f"no import cycle among {len(modules)} modules and their rooms")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
