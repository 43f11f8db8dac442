"""Tree diffs: exactly the record-level changes, visiting only the subtrees that differ."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pypds import cid_for_cbor
from pypds.mst import build_tree, diff_trees
from pypds.operation import RecordChange

from .conftest import POST, post
from .test_mst import EXAMPLE_KEYS, MemorySource


def naive_diff(old: dict[str, object], new: dict[str, object]) -> list[RecordChange]:
    out = []
    for key in sorted(old.keys() | new.keys(), key=str.encode):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        action = "create" if a is None else "delete" if b is None else "update"
        out.append(RecordChange(key, action, a, b))
    return out


def stored_tree(source: MemorySource, items: dict):
    root, _ = build_tree(sorted((k.encode(), v) for k, v in items.items()))
    source.store(root)
    return root.cid


values = st.integers(0, 3).map(lambda n: cid_for_cbor(bytes([n])))
key_sets = st.dictionaries(st.sampled_from(EXAMPLE_KEYS), values, max_size=60)


@settings(max_examples=200, deadline=None)
@given(key_sets, key_sets)
def test_diff_equals_comparing_the_full_key_sets(old, new):
    source = MemorySource()
    changes = list(diff_trees(source, stored_tree(source, old), stored_tree(source, new)))
    assert changes == naive_diff(old, new)


class CountingSource(MemorySource):
    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    def load_node(self, cid):
        self.loads += 1
        return super().load_node(cid)


def test_one_change_in_a_large_tree_visits_only_a_few_nodes():
    items = {f"{POST}/{i:06d}": cid_for_cbor(str(i).encode()) for i in range(3000)}
    changed = dict(items)
    changed[f"{POST}/001500"] = cid_for_cbor(b"new")
    source = CountingSource()
    old, new = stored_tree(source, items), stored_tree(source, changed)
    source.loads = 0
    changes = list(diff_trees(source, old, new))
    assert changes == [RecordChange(f"{POST}/001500", "update", items[f"{POST}/001500"], cid_for_cbor(b"new"))]
    total_nodes = len(source.blocks) // 2
    assert source.loads < 40 < total_nodes  # two root-to-leaf paths, not the whole tree


def test_repo_diff_between_commits_and_refs(repo):
    repo.put(POST, "a", post(1))
    repo.put(POST, "b", post(2))
    repo.set_ref("before", repo.head)
    old_b = repo.find_cid(POST, "b")
    repo.put(POST, "b", post(20))
    repo.delete(POST, "a")
    repo.put(POST, "c", post(3))
    changes = repo.diff("before")
    assert [(c.path, c.action) for c in changes] == [
        (f"{POST}/a", "delete"),
        (f"{POST}/b", "update"),
        (f"{POST}/c", "create"),
    ]
    assert changes[1].old == old_b and changes[1].new == repo.find_cid(POST, "b")
    assert repo.diff(repo.head) == []
    assert [c.action for c in repo.diff(repo.head, "before")] == ["create", "update", "delete"]


def test_head_names_the_current_commit(repo):
    repo.put(POST, "a", post(1))
    before = repo.head
    repo.put(POST, "b", post(2))
    assert [c.path for c in repo.diff(before, "HEAD")] == [f"{POST}/b"]
