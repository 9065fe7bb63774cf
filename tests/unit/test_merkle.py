"""schemas/merkle.py against the Certificate Transparency reference vectors (the RFC 6962
test data of google/certificate-transparency, also used by transparency-dev/merkle), and
properties over every tree shape up to 70 leaves: a proof that holds for the true tree
fails for any change to the leaf, the proof, the index or the roots."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.merkle import (
    EMPTY_ROOT,
    Frontier,
    ProofError,
    Tree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

INPUTS = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243",
                                        "5051525354555657", "606162636465666768696a6b6c6d6e6f")]
LEAVES = [leaf_hash(d) for d in INPUTS]
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
INCLUSION = [  # (0-based leaf, tree size, audit path)
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]


def test_tree_heads_match_the_reference() -> None:
    tree = Tree()
    assert root([]) == EMPTY_ROOT == tree.root() == bytes.fromhex(ROOTS[0])
    for n in range(1, 9):
        tree.append(LEAVES[n - 1])
        assert root(LEAVES[:n]).hex() == tree.root().hex() == ROOTS[n], n
    assert [tree.root_at(n).hex() for n in range(9)] == ROOTS


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_inclusion_proofs_match_the_reference(index: int, size: int, path: list[str]) -> None:
    proof = inclusion_proof(index, LEAVES[:size])
    assert [p.hex() for p in proof] == path
    verify_inclusion(index, size, LEAVES[index], proof, bytes.fromhex(ROOTS[size]))


@pytest.mark.parametrize(("first", "second", "path"), CONSISTENCY)
def test_consistency_proofs_match_the_reference(first: int, second: int,
                                                path: list[str]) -> None:
    proof = consistency_proof(first, LEAVES[:second])
    assert [p.hex() for p in proof] == path
    verify_consistency(first, second, proof, bytes.fromhex(ROOTS[first]),
                       bytes.fromhex(ROOTS[second]))


def _flip(h: bytes) -> bytes:
    return bytes([h[0] ^ 1]) + h[1:]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=12), min_size=1, max_size=70), st.data())
def test_every_inclusion_proof_holds_and_no_altered_one_does(
        data: list[bytes], draw: st.DataObject) -> None:
    leaves = [leaf_hash(d) for d in data]
    tree = Tree()
    for leaf in leaves:
        tree.append(leaf)
    n = len(leaves)
    head = tree.root()
    assert head == root(leaves)
    index = draw.draw(st.integers(0, n - 1), label="leaf")
    proof = tree.inclusion_proof(index)
    verify_inclusion(index, n, leaves[index], proof, head)
    with pytest.raises(ProofError):
        verify_inclusion(index, n, _flip(leaves[index]), proof, head)
    with pytest.raises(ProofError):
        verify_inclusion(index, n, leaves[index], proof, _flip(head))
    if proof:
        at = draw.draw(st.integers(0, len(proof) - 1), label="altered step")
        with pytest.raises(ProofError):
            verify_inclusion(index, n, leaves[index],
                             [*proof[:at], _flip(proof[at]), *proof[at + 1:]], head)
        with pytest.raises(ProofError):  # a step dropped
            verify_inclusion(index, n, leaves[index], proof[:-1], head)
    other = draw.draw(st.integers(0, n - 1), label="another index")
    if other != index and leaves[other] != leaves[index]:
        with pytest.raises(ProofError):
            verify_inclusion(other, n, leaves[index], proof, head)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=12), min_size=1, max_size=70), st.data())
def test_every_consistency_proof_holds_and_no_altered_one_does(
        data: list[bytes], draw: st.DataObject) -> None:
    leaves = [leaf_hash(d) for d in data]
    n = len(leaves)
    second = draw.draw(st.integers(1, n), label="second")
    first = draw.draw(st.integers(0, second), label="first")
    proof = consistency_proof(first, leaves[:second])
    r1, r2 = root(leaves[:first]), root(leaves[:second])
    verify_consistency(first, second, proof, r1, r2)
    if 0 < first < second:
        with pytest.raises(ProofError):
            verify_consistency(first, second, proof, _flip(r1), r2)
        with pytest.raises(ProofError):
            verify_consistency(first, second, proof, r1, _flip(r2))
        at = draw.draw(st.integers(0, len(proof) - 1), label="altered step")
        with pytest.raises(ProofError):
            verify_consistency(first, second, [*proof[:at], _flip(proof[at]),
                                               *proof[at + 1:]], r1, r2)
        # a rewritten history: the same sizes, one early leaf changed
        forged = [_flip(leaves[0]), *leaves[1:second]]
        with pytest.raises(ProofError):
            verify_consistency(first, second, consistency_proof(first, forged), r1,
                               root(forged))


def test_impossible_requests_are_refused_with_a_reason() -> None:
    with pytest.raises(ProofError, match="no leaf 3 in a tree of 3"):
        inclusion_proof(3, LEAVES[:3])
    with pytest.raises(ProofError, match="cannot be a prefix"):
        verify_consistency(5, 4, [], EMPTY_ROOT, EMPTY_ROOT)
    with pytest.raises(ProofError, match="different roots"):
        verify_consistency(4, 4, [], LEAVES[0], LEAVES[1])


@given(st.integers(min_value=0, max_value=70), st.integers(min_value=0, max_value=40))
def test_a_frontier_stored_and_read_back_grows_into_the_same_roots(n: int, more: int) -> None:
    """A witness keeps only the frontier of the tree it cosigned: read back from its text
    and extended, it gives every root a tree built from all the leaves gives."""
    leaves = [leaf_hash(bytes([i % 256, i // 256])) for i in range(n + more)]
    kept = Frontier()
    for leaf in leaves[:n]:
        kept.append(leaf)
    assert kept.root() == root(leaves[:n])
    again = Frontier.parse(kept.text())
    for i, leaf in enumerate(leaves[n:], start=n + 1):
        again.append(leaf)
        assert again.root() == root(leaves[:i])
    assert again.size == n + more


def test_a_frontier_with_the_wrong_number_of_peaks_is_refused() -> None:
    with pytest.raises(ProofError, match="cannot be the edge"):
        Frontier(3, [b"\0" * 32])  # 3 = 2 + 1 needs two peaks
