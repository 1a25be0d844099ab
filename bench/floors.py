"""Reference floors: the score a model must beat to have learned more than counting.

A character model that ends above the bigram floor of its test split has learned less than a table
of character-pair counts; a classifier at chance accuracy has learned nothing. `floors(data)` gives
the run-level metrics of docs/mlflow-layout.md for a dataset from `bench.data.load_dataset`:

- char tasks (``CharData``): ``floor_unigram_bpc`` and ``floor_bigram_bpc``, the bits per
  character of the test split under a unigram and a bigram model counted on the training split;
- classification (``ImageData``): ``floor_chance_acc`` = 1/K (a fraction, like ``val_acc``) and
  ``floor_chance_err`` = 100 * (1 - 1/K) (in %, like ``val_err``), for K classes.

The count models, with V the vocabulary size, n(c) the count of c in the training stream (length
N) and n(a, c) the count of the pair "a then c" in it (add-one, i.e. Laplace, smoothing over the
whole vocabulary, so a character or pair never seen in training still has a probability)::

    unigram  P(c)     = (n(c) + 1) / (N + V)
    bigram   P(c | a) = (n(a, c) + 1) / (n(a, .) + V),   n(a, .) = sum over c of n(a, c)

A split s_0 .. s_{L-1} costs -(1/L) * sum_t log2 P(s_t | ...) bits per character; under the bigram
model s_0 has no predecessor in the split and is scored by the unigram. Every character of the
split is scored; the model's own test_bpc scores the targets of its seq_len chunks (s_1 .. s_{nT}),
which differs from this by at most a seq_len-th of the split.

Counting is O(N) with ``numpy.bincount`` (about a second for the 11 M characters of pysrc) and the
result is cached in-process per (corpus hash, split sizes, vocabulary size, split), so the many
runs of one study process pay it once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bench.data import CharData, ImageData

__all__ = ["CharFloors", "chance_floors", "char_floors", "floors"]

# (corpus hash, split sizes, vocab size, split) -> CharFloors. In-process only: a run process
# computes each split's floors once however many runs it makes; nothing here goes to disk.
_CACHE: dict[tuple, CharFloors] = {}
_DENSE_PAIRS = 1 << 24  # up to V*V = 16.8 M pair counters (134 MB) count densely, else by sorting


@dataclass(frozen=True)
class CharFloors:
    """Bits per character of one split under the count models (module docstring)."""

    unigram_bpc: float
    bigram_bpc: float
    chars: int  # L, the characters scored


def char_floors(data: CharData, split: str = "test") -> CharFloors:
    """Unigram and bigram bits/char of ``split``, counted on ``data.train`` with add-one smoothing.

    Args:
        data: a character corpus (``CharData``; streams are int64 indices into ``data.vocab``).
        split: ``"test"`` or ``"val"``.

    Returns:
        The split's :class:`CharFloors`. Cached in-process when ``data.info`` has a ``hash``.

    Raises:
        ValueError: an unknown split, or an empty training or evaluated split.

    Example:
        >>> import torch
        >>> from bench.data import CharData
        >>> codes = torch.tensor([0, 1, 0, 1, 0, 1])
        >>> f = char_floors(CharData(codes, codes[:2], codes[:2], "ab"))
        >>> f.unigram_bpc  # P(a) = P(b) = (3 + 1) / (6 + 2)
        1.0
        >>> round(f.bigram_bpc, 6)  # (unigram's 1 bit for "a", -log2 P(b|a) = -log2 4/5) / 2
        0.660964
    """
    if split not in ("test", "val"):
        raise ValueError(f"split: expected 'test' or 'val', got {split!r}")
    key = None
    if data.info.get("hash"):
        key = (data.info["hash"], len(data.train), len(data.val), len(data.test), len(data.vocab), split)
        if key in _CACHE:
            return _CACHE[key]
    train = data.train.numpy().astype(np.int64, copy=False)
    target = (data.test if split == "test" else data.val).numpy().astype(np.int64, copy=False)
    if len(train) < 2 or len(target) == 0:
        raise ValueError(f"char_floors: need >= 2 training and >= 1 {split} characters, got "
                         f"{len(train)} and {len(target)}")
    result = _count_floors(train, target, len(data.vocab))
    if key is not None:
        _CACHE[key] = result
    return result


def chance_floors(classes: int) -> dict[str, float]:
    """Chance accuracy 1/K (fraction) and error 100 * (1 - 1/K) (%) of a K-class problem.

    Example:
        >>> chance_floors(10)
        {'floor_chance_acc': 0.1, 'floor_chance_err': 90.0}
    """
    if classes < 1:
        raise ValueError(f"classes: expected >= 1, got {classes}")
    return {"floor_chance_acc": 1.0 / classes, "floor_chance_err": 100.0 * (1.0 - 1.0 / classes)}


def floors(data: CharData | ImageData) -> dict[str, float]:
    """The run-level floor metrics of a dataset, by their names in docs/mlflow-layout.md.

    Args:
        data: a dataset from ``bench.data.load_dataset`` (after any train/eval limits, so the
            floors describe the splits the run actually uses).

    Returns:
        ``{"floor_unigram_bpc", "floor_bigram_bpc"}`` of the test split for a ``CharData``;
        ``{"floor_chance_acc", "floor_chance_err"}`` for an ``ImageData``.

    Raises:
        TypeError: ``data`` is neither.
    """
    if isinstance(data, CharData):
        f = char_floors(data, "test")
        return {"floor_unigram_bpc": f.unigram_bpc, "floor_bigram_bpc": f.bigram_bpc}
    if isinstance(data, ImageData):
        return chance_floors(data.classes)
    raise TypeError(f"floors: expected CharData or ImageData, got {type(data).__name__}")


def _count_floors(train: np.ndarray, target: np.ndarray, vocab: int) -> CharFloors:
    """Both floors of ``target`` (int64 codes in [0, vocab)) from counts on ``train``."""
    n_uni = np.bincount(train, minlength=vocab).astype(np.float64)  # (V,) n(c)
    log_uni = np.log2(n_uni + 1) - math.log2(len(train) + vocab)  # (V,) log2 P(c)
    uni_bits = -log_uni[target].sum()
    # pairs (a, c) coded a * V + c; n(a, .) = count of a as a predecessor = n(a) in train[:-1]
    n_prev = np.bincount(train[:-1], minlength=vocab).astype(np.float64)  # (V,)
    prev, nxt = target[:-1], target[1:]
    n_pair = _pair_counts(train[:-1] * vocab + train[1:], prev * vocab + nxt, vocab)  # (L-1,)
    log_bi = np.log2(n_pair + 1) - np.log2(n_prev[prev] + vocab)  # (L-1,) log2 P(s_t | s_{t-1})
    bi_bits = -log_uni[target[0]] - log_bi.sum()
    return CharFloors(float(uni_bits / len(target)), float(bi_bits / len(target)), len(target))


def _pair_counts(train_pairs: np.ndarray, query: np.ndarray, vocab: int) -> np.ndarray:
    """How often each code of ``query`` occurs in ``train_pairs`` (float64, shape of ``query``).

    Dense ``bincount`` over all V*V pairs when that table is small (every real corpus: pysrc has
    V = 224); a sort and ``searchsorted`` otherwise (a text with thousands of distinct characters).
    """
    if vocab * vocab <= _DENSE_PAIRS:
        return np.bincount(train_pairs, minlength=vocab * vocab).astype(np.float64)[query]
    codes, counts = np.unique(train_pairs, return_counts=True)
    pos = np.minimum(np.searchsorted(codes, query), len(codes) - 1)
    return np.where(codes[pos] == query, counts[pos], 0).astype(np.float64)
