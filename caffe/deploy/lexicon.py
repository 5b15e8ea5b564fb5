"""``Lexicon``: lexicon-assisted text recognition, as senlinuc/caffe_ocr's ``ocr_test`` reads English words.

The words of a list (one a line) are kept as written, with their first letter upper-case, and all upper-case.
For a line read by best-path decoding, the candidates are the words within edit distance ``min(2, len // 3)``
of it (so a reading under 3 characters must match exactly); the answer is the candidate the net's scores give
the lowest CTC cost, -log p(word | scores); with no candidate (or none spelt in the labels) the reading stays.
Distances are computed for every word of a length at once (NumPy): with 100,000 words (264,000 forms) a
query takes about 30 ms on 2 cores, the lexicon 1.2 s to load.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

MAX_WORD = 64  # longer lines of a lexicon file are not words: skipped


class Lexicon:
    """Words grouped by length as code points, for :meth:`near` (see the module)."""

    def __init__(self, words: Iterable[str]) -> None:
        variants: set[str] = set()
        for word in words:
            word = word.strip()
            if word and len(word) <= MAX_WORD:
                variants.update((word, word[:1].upper() + word[1:], word.upper()))
        groups: dict[int, list[str]] = {}
        for word in sorted(variants):
            groups.setdefault(len(word), []).append(word)
        self._groups = {
            n: (ws, np.array([[ord(c) for c in w] for w in ws], dtype=np.int32)) for n, ws in groups.items()
        }
        self.size = len(variants)

    @classmethod
    def read(cls, path: str | os.PathLike) -> Lexicon:
        """The words of a UTF-8 file, one a line (size-capped; a caffe error names the file)."""
        from caffe.deploy.errors import ModelFilesError
        from caffe.limits import read_text

        return cls(read_text(path, "lexicon", error=ModelFilesError).splitlines())

    def near(self, text: str, distance: int) -> list[str]:
        """The words within ``distance`` edits (insertions, deletions, substitutions) of ``text``, nearest first."""
        query = np.array([ord(c) for c in text], dtype=np.int32)
        found: list[tuple[int, str]] = []
        for length in range(max(1, len(text) - distance), len(text) + distance + 1):
            if length not in self._groups:
                continue
            words, codes = self._groups[length]
            d = _distances(query, codes)
            found += [(int(d[i]), words[i]) for i in np.flatnonzero(d <= distance)]
        return [w for _, w in sorted(found)]


def _distances(query: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Levenshtein distances of ``query`` to every row of ``codes`` (M words of one length L)."""
    m, length = codes.shape
    prev = np.broadcast_to(np.arange(length + 1, dtype=np.int32), (m, length + 1)).copy()
    for i, q in enumerate(query, 1):
        keep = np.minimum(prev[:, :-1] + (codes != q), prev[:, 1:] + 1)  # substitute or match; delete
        cur = np.empty_like(prev)
        cur[:, 0] = i
        for j in range(1, length + 1):
            cur[:, j] = np.minimum(keep[:, j - 1], cur[:, j - 1] + 1)  # or insert
        prev = cur
    return prev[:, length]


def best_by_ctc(scores: torch.Tensor, words: Sequence[str], labels: Sequence[str], blank: int) -> str | None:
    """The word of ``words`` whose characters' classes (each character a label) the (T, C) ``scores`` give the
    lowest CTC cost; None when no word is spelt in the labels or can be aligned in T steps."""
    index = {label: i for i, label in enumerate(labels) if len(label) == 1 and i != blank}
    spelt = [w for w in words if all(c in index for c in w)]
    if not spelt:
        return None
    steps = scores.shape[0]
    log_probs = F.log_softmax(scores.float(), dim=-1).unsqueeze(1).expand(steps, len(spelt), scores.shape[-1])
    targets = torch.tensor([index[c] for w in spelt for c in w], dtype=torch.long)
    costs = F.ctc_loss(
        log_probs,
        targets,
        torch.full((len(spelt),), steps, dtype=torch.long),
        torch.tensor([len(w) for w in spelt], dtype=torch.long),
        blank=blank,
        reduction="none",
    )
    best = int(torch.argmin(costs))
    return spelt[best] if torch.isfinite(costs[best]) else None
