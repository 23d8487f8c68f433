"""Dependency graph checks for one batch: self-dependency and cycle detection (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from core.errors import DependencyCycle


def find_cycle(edges: Mapping[str, Sequence[str]]) -> list[str] | None:
    """Return one cycle (as a closed path of node names) in `edges`, or None.

    `edges[a]` lists the nodes `a` depends on. Nodes absent from the mapping have no edges.
    Iterative depth-first search, so deep chains do not hit the recursion limit.
    """
    white, grey, black = 0, 1, 2
    colour: dict[str, int] = {}
    for root in edges:
        if colour.get(root, white) != white:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        colour[root] = grey
        while stack:
            node, i = stack[-1]
            deps = edges.get(node, ())
            if i < len(deps):
                stack[-1] = (node, i + 1)
                nxt = deps[i]
                state = colour.get(nxt, white)
                if state == grey:
                    return [*path[path.index(nxt):], nxt]
                if state == white:
                    colour[nxt] = grey
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                colour[node] = black
                stack.pop()
                path.pop()
    return None


def check_acyclic(edges: Mapping[str, Sequence[str]]) -> None:
    """Raise DependencyCycle if `edges` has a cycle."""
    cycle = find_cycle(edges)
    if cycle is not None:
        raise DependencyCycle(cycle)


def topological_order(edges: Mapping[str, Sequence[str]]) -> list[str]:
    """Nodes of `edges` ordered so that every node comes after the nodes it depends on."""
    check_acyclic(edges)
    order: list[str] = []
    seen: set[str] = set()
    for root in edges:
        stack: list[tuple[str, bool]] = [(root, False)]
        while stack:
            node, done = stack.pop()
            if done:
                order.append(node)
                continue
            if node in seen:
                continue
            seen.add(node)
            stack.append((node, True))
            stack.extend((d, False) for d in reversed(edges.get(node, ())) if d not in seen)
    return [n for n in order if n in edges]
