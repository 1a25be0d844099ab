"""The downloadable loaders parse their real file formats (written here in miniature)."""

import gzip
import io
import pickle
import tarfile

import numpy as np
import pytest
import torch

from bench.data import load_dataset


def write_idx(path, array, magic):
    header = bytes([0, 0, magic, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_mnist_idx_files(tmp_path, monkeypatch):
    monkeypatch.setenv("LABBENCH_DATA", str(tmp_path))
    d = tmp_path / "mnist"
    d.mkdir()
    rng = np.random.default_rng(0)
    write_idx(d / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (60, 28, 28)), 8)
    write_idx(d / "train-labels-idx1-ubyte.gz", np.arange(60) % 10, 8)
    write_idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (12, 28, 28)), 8)
    write_idx(d / "t10k-labels-idx1-ubyte.gz", np.arange(12) % 10, 8)
    data = load_dataset("mnist")
    assert data.info["splits"] == [50, 10, 12] and data.x_test.shape == (12, 1, 28, 28)
    assert data.y_val.tolist() == [(50 + i) % 10 for i in range(10)]  # the last sixth of train


def test_cifar10_python_tarball(tmp_path, monkeypatch):
    monkeypatch.setenv("LABBENCH_DATA", str(tmp_path))
    (tmp_path / "cifar10").mkdir()
    rng = np.random.default_rng(0)
    with tarfile.open(tmp_path / "cifar10" / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, n in [*((f"data_batch_{i}", 10_000) for i in range(1, 6)), ("test_batch", 50)]:
            blob = pickle.dumps({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                                 b"labels": list(rng.integers(0, 10, n))})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    data = load_dataset("cifar10", eval_limit=20)
    assert data.info["splits"] == [45000, 20, 20] and data.x_train.shape[1:] == (3, 32, 32)
    # standardized per channel with training statistics
    assert data.x_train.mean(dim=(0, 2, 3)).abs().max() < 1e-3
    assert torch.allclose(data.x_train.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)


def test_svhn_mat_files(tmp_path, monkeypatch):
    from scipy.io import savemat

    monkeypatch.setenv("LABBENCH_DATA", str(tmp_path))
    (tmp_path / "svhn").mkdir()
    rng = np.random.default_rng(0)
    for split, n in [("train", 5000), ("extra", 2000), ("test", 30)]:
        savemat(tmp_path / "svhn" / f"{split}_32x32.mat",
                {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                 "y": (np.arange(n) % 10 + 1).reshape(-1, 1)})
    data = load_dataset("svhn")
    assert data.info["splits"] == [7000 - 6000, 6000, 30]
    assert set(data.y_test.tolist()) == set(range(10))  # label 10 is digit 0


def test_linux_from_a_tarball_keeps_kernel_sources_only(tmp_path, monkeypatch):
    monkeypatch.setenv("LABBENCH_DATA", str(tmp_path))
    (tmp_path / "linux").mkdir()
    files = {"linux-6.1/kernel/b.c": "int b;\n", "linux-6.1/kernel/a.h": "#define A 1\n",
             "linux-6.1/kernel/sub/c.c": "int c;\n", "linux-6.1/mm/x.c": "int x;\n",
             "linux-6.1/kernel/notes.txt": "no\n"}
    with tarfile.open(tmp_path / "linux" / "linux-6.1.tar.xz", "w:xz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text.encode()))
    data = load_dataset("linux")
    text = "".join(data.vocab[i] for i in torch.cat([data.train, data.val, data.test]).tolist())
    assert text == "#define A 1\nint b;\nint c;\n"  # sorted by path, kernel/ .c/.h only
    cached = list((tmp_path / "cache").glob("*.kernel.txt"))
    assert len(cached) == 1 and load_dataset("linux").info["hash"] == data.info["hash"]


def test_unknown_text_file(tmp_path):
    from bench.data import DatasetNotFoundError

    with pytest.raises(DatasetNotFoundError, match="no such file"):
        load_dataset(f"text:{tmp_path / 'missing.txt'}")
