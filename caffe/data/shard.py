"""Which records a rank reads when several processes train together (issue 13).

Records are counted globally, on across wrap-arounds and epochs: the record at global offset ``k`` goes to
rank ``k mod N``. Rank ``r`` therefore reads global records ``r, r + N, r + 2N, ...``: its ``j``-th item of
iteration ``i`` (batch ``B`` per rank) is global item ``i·N·B + j·N + r``, and the ranks' batches of one
iteration together are the ``N·B`` records one process with batch ``N·B`` reads in that iteration.
TEST nets are not sharded: rank 0 alone tests, on every record.

Random draws follow the same rule, so that the union holds for what the ranks produce, not only for which
records they read: every rank draws the one process's global sequence (the same generator, seeded alike)
and keeps its own items' draws (:meth:`Shard.draws`), and every rank draws the same data order (shuffles,
``rand_skip``) from the same seed (:func:`shared_seed`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Shard:
    """This process's part of the records: every ``size``-th one from offset ``rank``."""

    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls, phase: int) -> Shard:
        """The shard of this process for a layer of ``phase``, from :func:`caffe.parallel.world`: every
        record when it trains alone, and in TEST nets (only rank 0 tests, on the whole test set, as in Caffe)."""
        from caffe import parallel
        from caffe.proto import caffe_pb2 as pb

        if phase == pb.TEST:
            return ALONE
        rank, size = parallel.world()
        return cls(int(rank), int(size))

    def global_offset(self, local: int) -> int:
        """The global offset of this rank's ``local``-th record (counting from 0)."""
        return local * self.size + self.rank

    def global_count(self, local: int) -> int:
        """Global records passed when this rank has passed ``local`` of its own (and the others theirs)."""
        return local * self.size

    def draws(self, rng: np.random.Generator, items: int, per_item: int) -> np.ndarray:
        """This rank's next ``items`` items' uniforms, shape ``(items, per_item)``: out of the global sequence in
        which every item (whichever rank reads it) draws ``per_item``, its ``j``-th item gets those of global
        item ``j·N + r``. Alone, exactly ``rng.random((items, per_item))``."""
        return rng.random((items, self.size, per_item))[:, self.rank]

    def skip_draws(self, rng: np.random.Generator, items: int, per_item: int) -> None:
        """Move ``rng`` on as :meth:`draws` would for ``items`` of this rank's items (one jump of the generator)."""
        if items and per_item:
            rng.bit_generator.advance(int(items) * self.size * int(per_item))


def shared_seed(seed: int, shard: Shard) -> int | None:
    """The seed of a data layer's order and augmentation, which every rank must share: ``seed`` itself when
    the layer is not sharded; rank 0's ``seed`` when several ranks train in a process group (so the ranks
    together draw what one process seeded like rank 0, i.e. with the solver's ``random_seed``, draws); None
    while several ranks have no group yet (pycaffe's ``caffe.NCCL`` joins after the nets are built: the layer
    keeps its own seed, which agrees when the ranks were seeded alike, and asks again once the group exists).

    The seed is drawn from each rank's own generator (``random_seed + rank``) and then replaced, rather than
    derived from the rank-free ``random_seed``, so that a process training alone draws exactly as before and
    an unseeded run agrees too.
    """
    from caffe import parallel

    if shard.size == 1:
        return seed
    if not parallel.joined():
        return None
    return parallel.root_value(seed)


#: The shard of a process training alone: every record.
ALONE = Shard()
