"""Which records a rank reads when several processes train together (issue 13).

Records are counted globally, on across wrap-arounds and epochs: the record at global offset ``k`` goes to
rank ``k mod N``. Rank ``r`` therefore reads global records ``r, r + N, r + 2N, ...``: its ``j``-th item of
iteration ``i`` (batch ``B`` per rank) is global item ``i·N·B + j·N + r``, and the ranks' batches of one
iteration together are the ``N·B`` records one process with batch ``N·B`` reads in that iteration.
TEST nets are not sharded: rank 0 alone tests, on every record.
"""

from __future__ import annotations

from dataclasses import dataclass


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


#: The shard of a process training alone: every record.
ALONE = Shard()
