import pytest

from core.errors import DependencyCycle
from core.jobs.depgraph import check_acyclic, find_cycle, topological_order


def test_chain_and_diamond_have_no_cycle() -> None:
    assert find_cycle({"c": ["b"], "b": ["a"], "a": []}) is None
    assert find_cycle({"d": ["b", "c"], "b": ["a"], "c": ["a"]}) is None


def test_finds_cycle_as_closed_path() -> None:
    cycle = find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]})
    assert cycle is not None
    assert cycle[0] == cycle[-1]
    assert set(cycle) == {"a", "b", "c"}


def test_self_loop_is_a_cycle() -> None:
    assert find_cycle({"a": ["a"]}) == ["a", "a"]


def test_check_acyclic_raises_typed_error_naming_the_cycle() -> None:
    with pytest.raises(DependencyCycle) as info:
        check_acyclic({"x": ["y"], "y": ["x"]})
    assert info.value.field == "depends_on"
    assert "x" in str(info.value)
    assert "y" in str(info.value)


def test_deep_chain_does_not_recurse() -> None:
    edges = {str(i): [str(i - 1)] for i in range(1, 20_000)}
    assert find_cycle(edges) is None
    order = topological_order(edges)
    assert order.index("5") < order.index("6")


def test_topological_order_puts_dependencies_first() -> None:
    edges = {"d": ["b", "c"], "b": ["a"], "c": ["a"], "a": []}
    order = topological_order(edges)
    for node, deps in edges.items():
        assert all(order.index(d) < order.index(node) for d in deps)
