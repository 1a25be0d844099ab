import math

import pytest
import torch

from bench.data import DatasetNotFoundError, load_dataset


def test_committed_fashion_subset_loads_with_stratified_splits():
    d = load_dataset("fashion-mnist")
    assert d.info["splits"] == [3000, 600, 1000]
    assert d.x_train.shape == (3000, 1, 28, 28) and d.x_train.dtype == torch.float32
    assert torch.bincount(d.y_test).tolist() == [100] * 10
    # centered on the training mean
    assert d.x_train.mean(0).abs().max() < 1e-5


def test_image_batches_cover_the_split_once():
    d = load_dataset("fashion-mnist", train_limit=250, eval_limit=130)
    g = torch.Generator().manual_seed(0)
    seen = torch.cat([y for _, y in d.train_batches(100, g)])
    assert len(seen) == 200  # the partial batch is dropped
    ys = torch.cat([y for _, y in d.eval_batches("test", 50)])
    assert torch.equal(ys, d.y_test) and len(ys) == 130


def test_missing_dataset_says_where_the_files_go(tmp_path, monkeypatch):
    monkeypatch.setenv("LABBENCH_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist")
    msg = str(info.value)
    assert str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz") in msg
    assert "f68b3c2dcbeaaa9fbdd348bbdeb94873" in msg and "LABBENCH_DATA" in msg


def test_text_corpus_chunks_are_next_character_pairs(tmp_path):
    text = "".join(chr(97 + (i * 7) % 26) for i in range(1000))
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    d = load_dataset(f"text:{path}")
    assert d.info["splits"] == [800, 100, 100] and d.vocab == "abcdefghijklmnopqrstuvwxyz"
    decode = lambda t: "".join(d.vocab[i] for i in t.tolist())  # noqa: E731
    g = torch.Generator().manual_seed(0)
    x, y = next(d.train_batches(4, g, seq_len=10))
    for xi, yi in zip(x, y, strict=True):
        s = decode(xi) + decode(yi)[-1]
        assert s in text and decode(yi) == s[1:]
    assert d.train_steps_per_epoch(4, 10) == (799 // 10) // 4


def test_pysrc_is_the_stdlib_and_hashed():
    d = load_dataset("pysrc", train_limit=5000, eval_limit=1000)
    assert d.info["splits"] == [5000, 1000, 1000]
    assert len(d.info["hash"]) == 64 and d.info["chars"] > 1_000_000
    assert "def " in "".join(d.vocab[i] for i in d.train[:5000].tolist())
    assert math.isclose(sum(d.info["splits"]), 7000)
