"""bench.floors: unigram/bigram bits per character against hand counts and a brute-force counter."""

import itertools
import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
import torch

from bench import floors as floors_module
from bench.data import CharData, load_dataset
from bench.floors import chance_floors, char_floors, floors


def _char_data(train: str, val: str, test: str, vocab: str, digest: str | None = None) -> CharData:
    def codes(text: str) -> torch.Tensor:
        return torch.tensor([vocab.index(ch) for ch in text], dtype=torch.int64)

    return CharData(codes(train), codes(val), codes(test), vocab, info={"hash": digest} if digest else {})


def test_floors_of_a_tiny_text_match_a_hand_count():
    # train "abacab": n(a)=3, n(b)=2, n(c)=1 of N=6, V=3, so P(a)=4/9, P(b)=3/9, P(c)=2/9.
    # predecessors train[:-1] = "abaca": n(a,.)=3, n(b,.)=1, n(c,.)=1;
    # pairs ab x2, ba, ac, ca: P(a|c) = (1+1)/(1+3) = 1/2, P(b|a) = (2+1)/(3+3) = 1/2.
    data = _char_data("abacab", "bb", "cab", "abc")
    f = char_floors(data, "test")
    assert f.chars == 3
    assert f.unigram_bpc == pytest.approx(-(math.log2(2 / 9) + math.log2(4 / 9) + math.log2(3 / 9)) / 3,
                                          rel=1e-12)
    # "c" has no predecessor in the split: it is scored by the unigram
    assert f.bigram_bpc == pytest.approx(-(math.log2(2 / 9) + math.log2(1 / 2) + math.log2(1 / 2)) / 3,
                                         rel=1e-12)
    # val "bb": P(b) = 3/9, then P(b|b) = (0+1)/(1+3) = 1/4 (a pair never seen in training)
    v = char_floors(data, "val")
    assert v.unigram_bpc == pytest.approx(-math.log2(3 / 9), rel=1e-12)
    assert v.bigram_bpc == pytest.approx(-(math.log2(3 / 9) + math.log2(1 / 4)) / 2, rel=1e-12)


def _brute_force_bpc(train: list[int], target: list[int], vocab: int) -> tuple[float, float]:
    """The module docstring's formulas with Counters and exact fractions, one character at a time."""
    uni = Counter(train)
    pairs = Counter(itertools.pairwise(train))
    prev = Counter(train[:-1])

    def p_uni(c):
        return Fraction(uni[c] + 1, len(train) + vocab)

    uni_bits = -sum(math.log2(p_uni(c)) for c in target)
    bi_bits = -math.log2(p_uni(target[0])) - sum(
        math.log2(Fraction(pairs[(a, c)] + 1, prev[a] + vocab)) for a, c in itertools.pairwise(target)
    )
    return uni_bits / len(target), bi_bits / len(target)


@pytest.mark.parametrize("dense", [True, False], ids=["bincount", "sorted"])
def test_floors_match_a_brute_force_counter(dense, monkeypatch):
    if not dense:
        monkeypatch.setattr(floors_module, "_DENSE_PAIRS", 0)  # take the sort/searchsorted path
    rng = np.random.default_rng(3)
    vocab = 7  # the last two letters never occur in training: smoothing must still score them
    train = rng.choice(5, size=2000, p=[0.4, 0.3, 0.15, 0.1, 0.05]).tolist()
    test = rng.integers(0, vocab, size=300).tolist()
    data = CharData(torch.tensor(train), torch.tensor(test[:10]), torch.tensor(test), "abcdefg")
    f = char_floors(data, "test")
    uni, bi = _brute_force_bpc(train, test, vocab)
    assert f.unigram_bpc == pytest.approx(uni, rel=1e-12)
    assert f.bigram_bpc == pytest.approx(bi, rel=1e-12)


def test_bigram_beats_unigram_on_sequential_text_and_not_on_shuffled_text(tmp_path):
    cycle = "abcdefgh" * 4000  # each character determines the next
    path = tmp_path / "cycle.txt"
    path.write_text(cycle)
    f = floors(load_dataset(f"text:{path}"))
    assert f["floor_unigram_bpc"] == pytest.approx(3.0, abs=1e-3)  # 8 equally frequent letters
    assert f["floor_bigram_bpc"] < 0.01
    # the same letters in random order: the previous character says nothing, and the bigram's
    # smoothing over 8 x 8 pairs costs a little more than the unigram's over 8 letters
    shuffled = "".join(np.random.default_rng(0).permutation(list(cycle)))
    path.write_text(shuffled)
    g = floors(load_dataset(f"text:{path}"))
    assert g["floor_unigram_bpc"] == pytest.approx(3.0, abs=0.01)
    assert g["floor_unigram_bpc"] <= g["floor_bigram_bpc"] < g["floor_unigram_bpc"] + 0.05


def test_floors_are_cached_per_corpus_split_and_sizes():
    data = _char_data("abacab" * 10, "bca", "cab", "abc", digest="tiny-corpus")
    first = char_floors(data, "test")
    assert char_floors(data, "test") is first
    assert char_floors(data, "val") is not first
    shorter = _char_data("abacab" * 10, "bca", "ca", "abc", digest="tiny-corpus")  # an eval limit
    assert char_floors(shorter, "test").chars == 2


def test_floors_returns_the_contract_names():
    text = _char_data("abacab", "bb", "cab", "abc")
    assert set(floors(text)) == {"floor_unigram_bpc", "floor_bigram_bpc"}
    images = load_dataset("fashion-mnist", train_limit=100, eval_limit=50)
    assert floors(images) == {"floor_chance_acc": 0.1, "floor_chance_err": 90.0}
    assert chance_floors(4) == {"floor_chance_acc": 0.25, "floor_chance_err": 75.0}
    with pytest.raises(TypeError, match="CharData or ImageData"):
        floors("pysrc")
    with pytest.raises(ValueError, match="split: expected 'test' or 'val', got 'train'"):
        char_floors(text, "train")
