"""The Merkle tree of RFC 9162 (Certificate Transparency 2.0, section 2.1; the same tree as
RFC 6962): tree heads, inclusion and consistency proofs, and their verification.

The audit's checkpoints commit to every archived event with such a tree (docs/audit.md):
a leaf is an event's canonical bytes, so anyone holding an event, a proof and a signed
checkpoint can check that the event is in the history the checkpoint names, and that a
later checkpoint only added to an earlier one, with any RFC 9162 verifier.

Proofs are lists of 32-byte hashes in the RFC's order. Building them from the leaf hashes
costs one pass over the tree (a CLI asks for a few at a time); the running root of a growing
tree costs O(log n) per leaf (``Tree``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from schemas.errors import MotcuaError

EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(MotcuaError):
    """A proof that does not hold, or a request for one that cannot exist."""


def leaf_hash(data: bytes) -> bytes:
    """HASH(0x00 || data): a leaf (the prefix keeps a leaf from passing for a node)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """HASH(0x01 || left || right): an interior node."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over leaf hashes."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(root(leaves[:k]), root(leaves[k:]))


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[n]): the audit path of leaf ``index`` in the tree of ``leaves``."""
    if not 0 <= index < len(leaves):
        raise ProofError(f"no leaf {index} in a tree of {len(leaves)}")
    return _path(index, leaves)


def _path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, leaves[:k]), root(leaves[k:])]
    return [*_path(m - k, leaves[k:]), root(leaves[:k])]


def consistency_proof(first: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(first, D[n]): that the tree of the first ``first`` leaves is a prefix."""
    if not 0 <= first <= len(leaves):
        raise ProofError(f"no tree of {first} inside a tree of {len(leaves)}")
    if first in (0, len(leaves)):
        return []
    return _subproof(first, leaves, True)


def _subproof(m: int, leaves: Sequence[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [root(leaves)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], whole), root(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), root(leaves[:k])]


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes],
                     tree_root: bytes) -> None:
    """RFC 9162 section 2.1.3.2; raises ProofError unless ``leaf`` (a leaf hash) is leaf
    ``index`` of the tree of ``size`` whose head is ``tree_root``."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is outside a tree of {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the inclusion proof is shorter than the tree is deep")
    if r != tree_root:
        raise ProofError(f"leaf {index} is not in the tree of {size} with root "
                         f"{tree_root.hex()} (the proof leads to {r.hex()})")


def verify_consistency(first: int, second: int, proof: Sequence[bytes], first_root: bytes,
                       second_root: bytes) -> None:
    """RFC 9162 section 2.1.4.2; raises ProofError unless the tree of ``first`` leaves with
    head ``first_root`` is a prefix of the tree of ``second`` leaves with ``second_root``."""
    if not 0 <= first <= second:
        raise ProofError(f"a tree of {first} cannot be a prefix of one of {second}")
    if first == 0 or first == second:
        if proof:
            raise ProofError("a consistency proof from an empty or equal tree must be empty")
        if first == second and first_root != second_root:
            raise ProofError(f"two different roots for the same tree size {first}")
        return
    if not proof:
        raise ProofError(f"an empty consistency proof from {first} to {second}")
    path = list(proof)
    if first & (first - 1) == 0:  # a power of two: the first tree is a node of the second
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the consistency proof is shorter than the tree is deep")
    if fr != first_root:
        raise ProofError(f"the tree of {first} with root {first_root.hex()} is not a prefix "
                         f"of the tree of {second} (the proof leads to {fr.hex()})")
    if sr != second_root:
        raise ProofError(f"the tree of {second} does not have root {second_root.hex()} "
                         f"(the proof leads to {sr.hex()})")


class Frontier:
    """The right edge of a growing tree (a "compact range"): the roots of its perfect
    subtrees, largest first, as a binary counter. Its head costs O(log n) per leaf and it
    is O(log n) to store, so a witness keeps the tree it cosigned without its leaves."""

    def __init__(self, size: int = 0, peaks: Sequence[bytes] = ()) -> None:
        sizes = _perfect(size)
        if len(peaks) != len(sizes) or any(len(h) != 32 for h in peaks):
            raise ProofError(f"{len(peaks)} peaks cannot be the edge of a tree of {size}")
        self.size = size
        self._peaks = [(n, bytes(h)) for n, h in zip(sizes, peaks, strict=True)]

    @property
    def peaks(self) -> list[bytes]:
        return [h for _, h in self._peaks]

    def append(self, leaf: bytes) -> None:
        """Add a leaf hash."""
        size, h = 1, leaf
        while self._peaks and self._peaks[-1][0] == size:
            left = self._peaks.pop()[1]
            size, h = size * 2, node_hash(left, h)
        self._peaks.append((size, h))
        self.size += 1

    def root(self) -> bytes:
        """MTH of the whole tree: the peaks folded from the right."""
        if not self._peaks:
            return EMPTY_ROOT
        h = self._peaks[-1][1]
        for _, left in reversed(self._peaks[:-1]):
            h = node_hash(left, h)
        return h

    def copy(self) -> Frontier:
        return Frontier(self.size, self.peaks)

    def text(self) -> str:
        """``<size> <hex peak> …``: what ``parse`` reads back."""
        return " ".join([str(self.size), *(h.hex() for h in self.peaks)])

    @classmethod
    def parse(cls, text: str) -> Frontier:
        size, *peaks = text.split()
        return cls(int(size), [bytes.fromhex(h) for h in peaks])


def _perfect(size: int) -> list[int]:
    """The sizes of the perfect subtrees a tree of ``size`` leaves ends in, largest first."""
    if size < 0:
        raise ProofError(f"a tree cannot have {size} leaves")
    return [1 << b for b in reversed(range(size.bit_length())) if size >> b & 1]


class Tree:
    """A growing tree that keeps its leaves (for proofs) and its ``Frontier``."""

    def __init__(self) -> None:
        self.leaves: list[bytes] = []
        self.frontier = Frontier()

    @property
    def size(self) -> int:
        return len(self.leaves)

    def append(self, leaf: bytes) -> int:
        """Add a leaf hash; returns its index."""
        self.leaves.append(leaf)
        self.frontier.append(leaf)
        return len(self.leaves) - 1

    def root(self) -> bytes:
        return self.frontier.root()

    def root_at(self, size: int) -> bytes:
        """MTH of the tree's first ``size`` leaves."""
        if not 0 <= size <= self.size:
            raise ProofError(f"no tree of {size} leaves: this one has {self.size}")
        return self.root() if size == self.size else root(self.leaves[:size])

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(index, self.leaves[:self.size if size is None else size])

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        return consistency_proof(first, self.leaves[:self.size if second is None else second])
