"""Named datasets: image classification sets and character corpora.

`load_dataset(name)` returns an `ImageData` or a `CharData`; both batch themselves. Files are looked
for under ``$LABBENCH_DATA`` (default ``~/.cache/labbench/data``) and a few system places; image
sets are downloaded with checksums when absent (unless ``LABBENCH_OFFLINE=1``), and a missing set
raises `DatasetNotFoundError` saying exactly where the files go.

- ``fashion-mnist``: ``$LABBENCH_DATA/fashion-mnist/`` or Debian's
  ``/usr/share/datasets/fashion-mnist`` (package dataset-fashion-mnist); the last sixth of the
  training set is validation.
- ``mnist``: ``$LABBENCH_DATA/mnist/`` (downloaded); same split.
- ``cifar10``: ``$LABBENCH_DATA/cifar10/cifar-10-python.tar.gz`` (downloaded); 45k / 5k / 10k.
- ``svhn``: ``$LABBENCH_DATA/svhn/{train,extra,test}_32x32.mat`` (downloaded); train + extra less
  6,000 validation images (598,388, the paper's count) / 6,000 / test.
- ``pysrc``: the running Python's standard library sources (always present); 90 / 5 / 5 %.
- ``linux``: a kernel tree or tarball under ``$LABBENCH_DATA/linux/``, or Debian's
  ``/usr/src/linux-source-*.tar.xz`` (package linux-source-6.1); 90 / 5 / 5 %.
- ``text:PATH``: any UTF-8 text file (e.g. War and Peace); 80 / 10 / 10 %.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import sysconfig
import tarfile
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "CharData",
    "DatasetNotFoundError",
    "ImageData",
    "data_root",
    "load_dataset",
]

log = logging.getLogger(__name__)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are absent and could not be downloaded; the message says where they go."""


def data_root() -> Path:
    """``$LABBENCH_DATA``, or ``~/.cache/labbench/data``."""
    return Path(os.environ.get("LABBENCH_DATA") or Path.home() / ".cache" / "labbench" / "data")


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- batching -------------------------------------------------------------------------------
@dataclass
class ImageData:
    """Image classification splits; x: (N, C, H, W) float32 (centered), y: (N,) int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: int
    info: dict = field(default_factory=dict)
    task = "classification"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def train_batches(self, batch_size: int, generator: torch.Generator, seq_len: int = 0
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled full batches (the last partial batch is dropped, as in the reference code)."""
        order = torch.randperm(len(self.y_train), generator=generator)
        for i in range(len(order) // batch_size):
            idx = order[i * batch_size:(i + 1) * batch_size]
            yield self.x_train[idx], self.y_train[idx]

    def train_steps_per_epoch(self, batch_size: int, seq_len: int = 0) -> int:
        return len(self.y_train) // batch_size

    def eval_batches(self, split: str, batch_size: int, seq_len: int = 0
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every example of `split` ("val" or "test") in order, the last batch possibly short."""
        x, y = (self.x_val, self.y_val) if split == "val" else (self.x_test, self.y_test)
        for i in range(0, len(y), batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]


@dataclass
class CharData:
    """A character corpus split into train/val/test index streams (int64) over `vocab`."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    vocab: str
    info: dict = field(default_factory=dict)
    task = "lm"

    @staticmethod
    def _chunks(stream: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Non-overlapping (input, next-char target) chunks of length seq_len: (N, T) each."""
        n = (len(stream) - 1) // seq_len
        x = stream[:n * seq_len].view(n, seq_len)
        y = stream[1:n * seq_len + 1].view(n, seq_len)
        return x, y

    def train_batches(self, batch_size: int, generator: torch.Generator, seq_len: int = 100
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled full batches of chunks; every chunk starts from a zero state."""
        x, y = self._chunks(self.train, seq_len)
        order = torch.randperm(len(x), generator=generator)
        for i in range(len(order) // batch_size):
            idx = order[i * batch_size:(i + 1) * batch_size]
            yield x[idx], y[idx]

    def train_steps_per_epoch(self, batch_size: int, seq_len: int = 100) -> int:
        return ((len(self.train) - 1) // seq_len) // batch_size

    def eval_batches(self, split: str, batch_size: int, seq_len: int = 100
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """All chunks of `split` in order (each from a zero state, as in the reference code)."""
        x, y = self._chunks(self.val if split == "val" else self.test, seq_len)
        for i in range(0, len(x), batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]


# --- image sets -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Resource:
    filename: str
    url: str
    md5: str


_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
RESOURCES: dict[str, list[_Resource]] = {
    "fashion-mnist": [_Resource(f, _FASHION_URL + f, m) for f, m in zip(_IDX_FILES, (
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
        "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"), strict=True)],
    "mnist": [_Resource(f, _MNIST_URL + f, m) for f, m in zip(_IDX_FILES, (
        "f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"), strict=True)],
    "cifar10": [_Resource("cifar-10-python.tar.gz",
                          "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                          "c58f30108f718f92721af3b95e74349a")],
    "svhn": [_Resource(f"{s}_32x32.mat", f"http://ufldl.stanford.edu/housenumbers/{s}_32x32.mat", m)
             for s, m in (("train", "e26dedcc434d2e4c54c9b2d4a06d8373"),
                          ("extra", "a93ce644f1a588dc4d68dda5feec44a7"),
                          ("test", "eb5a983be6a315427106f1b164d9cef3"))],
}
# Other places a set may already be (Debian's dataset-fashion-mnist package).
SYSTEM_DIRS = {"fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")]}
APT_HINT = {"fashion-mnist": " (Debian: apt-get install dataset-fashion-mnist)"}


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(res: _Resource, dest: Path) -> None:
    """Download to a temporary name, check the md5, then rename: never leaves a corrupt file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    log.info("downloading %s", res.url)
    with urllib.request.urlopen(res.url, timeout=30) as response, tmp.open("wb") as out:
        while chunk := response.read(1 << 20):
            out.write(chunk)
    if _md5(tmp) != res.md5:
        tmp.unlink()
        raise OSError(f"checksum mismatch for {res.url}")
    tmp.replace(dest)


def _locate(name: str) -> Path:
    """The directory holding all of `name`'s files, downloading them if needed and allowed."""
    resources = RESOURCES[name]
    candidates = [data_root() / name, *SYSTEM_DIRS.get(name, [])]
    for directory in candidates:
        if all((directory / r.filename).is_file() for r in resources):
            return directory
    target = data_root() / name
    if os.environ.get("LABBENCH_OFFLINE") != "1":
        try:
            for r in resources:
                if not (target / r.filename).is_file():
                    _download(r, target / r.filename)
            return target
        except OSError as err:
            reason = f"download failed ({err})"
    else:
        reason = "LABBENCH_OFFLINE=1, no download attempted"
    files = "\n".join(f"  {target / r.filename}  <- {r.url} (md5 {r.md5})" for r in resources)
    raise DatasetNotFoundError(
        f"dataset {name!r} not found: {reason}.\nPut its files here{APT_HINT.get(name, '')}:\n"
        f"{files}\n(looked in: {', '.join(str(c) for c in candidates)}; set LABBENCH_DATA to "
        "change the data directory)")


def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _centered(x_train: np.ndarray, *others: np.ndarray) -> list[torch.Tensor]:
    """Scale to [0, 1] and subtract the training set's per-pixel mean (pylearn2 centers each split
    on its own mean; using the training mean for all splits avoids peeking at the test set)."""
    x_train = x_train.astype(np.float32) / 255.0
    mean = x_train.mean(axis=0, keepdims=True)
    return [torch.from_numpy(np.ascontiguousarray(x - mean)) for x in
            (x_train, *(o.astype(np.float32) / 255.0 for o in others))]


def _standardized(x_train: np.ndarray, *others: np.ndarray) -> list[torch.Tensor]:
    """Per-channel standardisation with training statistics (stands in for the paper's GCN+ZCA
    on CIFAR-10 and GCN+LCN on SVHN; see docs)."""
    x_train = x_train.astype(np.float32) / 255.0
    mean = x_train.mean(axis=(0, 2, 3), keepdims=True)
    std = x_train.std(axis=(0, 2, 3), keepdims=True)
    return [torch.from_numpy(np.ascontiguousarray((x - mean) / std)) for x in
            (x_train, *(o.astype(np.float32) / 255.0 for o in others))]


def _file_hashes(directory: Path, names: list[str]) -> str:
    """One hash over the *decompressed* contents, so a re-compressed copy hashes the same."""
    digest = hashlib.sha256()
    for n in names:
        raw = (directory / n).read_bytes()
        digest.update(gzip.decompress(raw) if n.endswith(".gz") else raw)
    return digest.hexdigest()


def _load_idx_set(name: str) -> ImageData:
    directory = _locate(name)
    x_tr, y_tr, x_te, y_te = (_read_idx(directory / f) for f in _IDX_FILES)
    n_val = round(len(y_tr) / 6)  # 10k of 60k: the last sixth of train, as the paper's MNIST
    xs = _centered(x_tr[:-n_val], x_tr[-n_val:], x_te)
    ys = [torch.from_numpy(y.astype(np.int64)) for y in (y_tr[:-n_val], y_tr[-n_val:], y_te)]
    return ImageData(xs[0][:, None], ys[0], xs[1][:, None], ys[1], xs[2][:, None], ys[2],
                     classes=10, info={"source": str(directory),
                                       "hash": _file_hashes(directory, list(_IDX_FILES))})


def _load_cifar10() -> ImageData:
    directory = _locate("cifar10")
    path = directory / "cifar-10-python.tar.gz"
    xs, ys = {}, {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            base = Path(member.name).name
            if base.startswith(("data_batch_", "test_batch")):
                batch = pickle.load(tar.extractfile(member), encoding="bytes")
                xs[base] = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                ys[base] = np.asarray(batch[b"labels"], dtype=np.int64)
    train = sorted(k for k in xs if k.startswith("data_batch_"))
    x_tr, y_tr = np.concatenate([xs[k] for k in train]), np.concatenate([ys[k] for k in train])
    x = _standardized(x_tr[:45000], x_tr[45000:], xs["test_batch"])
    y = [torch.from_numpy(v) for v in (y_tr[:45000], y_tr[45000:], ys["test_batch"])]
    return ImageData(x[0], y[0], x[1], y[1], x[2], y[2], classes=10,
                     info={"source": str(path), "hash": _md5(path)})


def _load_svhn() -> ImageData:
    from scipy.io import loadmat

    directory = _locate("svhn")

    def read(split: str) -> tuple[np.ndarray, np.ndarray]:
        mat = loadmat(directory / f"{split}_32x32.mat")
        x = np.transpose(mat["X"], (3, 2, 0, 1))  # (32, 32, 3, N) -> (N, 3, 32, 32)
        return x, (mat["y"].ravel() % 10).astype(np.int64)  # label 10 means digit 0

    (x_a, y_a), (x_b, y_b), (x_te, y_te) = read("train"), read("extra"), read("test")
    x_tr, y_tr = np.concatenate([x_a, x_b]), np.concatenate([y_a, y_b])
    perm = np.random.default_rng(0).permutation(len(y_tr))  # 6,000 validation images, fixed
    val, train = perm[:6000], np.sort(perm[6000:])
    x = _standardized(x_tr[train], x_tr[val], x_te)
    y = [torch.from_numpy(v) for v in (y_tr[train], y_tr[val], y_te)]
    return ImageData(x[0], y[0], x[1], y[1], x[2], y[2], classes=10,
                     info={"source": str(directory),
                           "hash": "|".join(r.md5 for r in RESOURCES["svhn"])})


# --- character corpora ----------------------------------------------------------------------
_SKIP_DIRS = {"site-packages", "test", "tests", "__pycache__"}


def pysrc_text() -> tuple[str, str]:
    """The running Python's standard-library sources: every ``*.py`` under the stdlib directory
    except site-packages and test suites, sorted by path, concatenated. Returns (text, source)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py")
                   if not _SKIP_DIRS.intersection(p.relative_to(root).parts[:-1]))
    if not files:
        raise DatasetNotFoundError(f"dataset 'pysrc': no *.py files under {root}")
    return "".join(p.read_text(encoding="utf-8", errors="replace") for p in files), str(root)


def _linux_sources() -> list[Path]:
    root = data_root() / "linux"
    found = [root] if (root / "kernel").is_dir() else []
    found += sorted(root.glob("linux*.tar.*")) if root.is_dir() else []
    found += sorted(Path("/usr/src").glob("linux-source-*.tar.xz"))
    return found


def linux_text() -> tuple[str, str]:
    """The Linux kernel's ``kernel/`` directory: every ``.c`` and ``.h`` file, sorted by path and
    concatenated (11.6 MB for 6.1; the paper's corpus had 6.2 M characters). Taken from a source
    tree at ``$LABBENCH_DATA/linux`` or a tarball (``$LABBENCH_DATA/linux/linux*.tar.*``, Debian's
    ``/usr/src/linux-source-*.tar.xz``); a tarball's corpus is cached next to the data."""
    sources = _linux_sources()
    if not sources:
        raise DatasetNotFoundError(
            "dataset 'linux' not found. Put a kernel source tree at "
            f"{data_root() / 'linux'} (with kernel/ inside) or a tarball at "
            f"{data_root() / 'linux'}/linux-X.Y.tar.xz (Debian: apt-get install linux-source-6.1, "
            "which installs /usr/src/linux-source-6.1.tar.xz)")
    src = sources[0]
    if src.is_dir():
        files = sorted(p for p in (src / "kernel").rglob("*") if p.suffix in (".c", ".h"))
        return "".join(p.read_text(encoding="utf-8", errors="replace") for p in files), str(src)
    cache = data_root() / "cache" / f"{src.name}.kernel.txt"
    if cache.is_file():
        return cache.read_text(encoding="utf-8"), str(src)
    parts = {}
    with tarfile.open(src) as tar:
        for member in tar:
            path = Path(member.name)
            if member.isfile() and len(path.parts) > 2 and path.parts[1] == "kernel" \
                    and path.suffix in (".c", ".h"):
                parts[member.name] = tar.extractfile(member).read().decode("utf-8", "replace")
    text = "".join(parts[k] for k in sorted(parts))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".part")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(cache)
    return text, str(src)


def _char_data(text: str, source: str, fractions: tuple[float, float]) -> CharData:
    vocab = "".join(sorted(set(text)))
    lookup = np.zeros(max(map(ord, vocab)) + 1, dtype=np.int64)
    lookup[[ord(ch) for ch in vocab]] = np.arange(len(vocab))
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    stream = torch.from_numpy(lookup[codes])
    n_train, n_val = int(len(stream) * fractions[0]), int(len(stream) * fractions[1])
    return CharData(stream[:n_train], stream[n_train:n_train + n_val],
                    stream[n_train + n_val:], vocab,
                    info={"source": source, "hash": _sha256_bytes(text.encode("utf-8")),
                          "chars": len(stream), "vocab_size": len(vocab)})


def _text_file(path: str) -> tuple[str, str]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise DatasetNotFoundError(f"dataset 'text:{path}': no such file {p}")
    return p.read_text(encoding="utf-8", errors="replace"), str(p.resolve())


DATASETS: dict[str, Callable[[], ImageData | CharData]] = {
    "fashion-mnist": lambda: _load_idx_set("fashion-mnist"),
    "mnist": lambda: _load_idx_set("mnist"),
    "cifar10": _load_cifar10,
    "svhn": _load_svhn,
    "pysrc": lambda: _char_data(*pysrc_text(), (0.90, 0.05)),
    "linux": lambda: _char_data(*linux_text(), (0.90, 0.05)),
}


def load_dataset(name: str, *, train_limit: int | None = None, eval_limit: int | None = None
                 ) -> ImageData | CharData:
    """Load a named dataset (or ``text:PATH``), optionally truncated for quick runs.

    Args:
        name: a key of `DATASETS` or ``text:PATH``.
        train_limit: keep only the first N training examples (images) or characters (corpora).
        eval_limit: keep only the first N validation and test examples or characters.

    Raises:
        ValueError: unknown name (listing the valid ones).
        DatasetNotFoundError: files absent and not downloadable (saying where they go).
    """
    if name.startswith("text:"):
        data = _char_data(*_text_file(name[len("text:"):]), (0.80, 0.10))
    elif name in DATASETS:
        data = DATASETS[name]()
    else:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}, text:PATH")
    data.info["name"] = name
    if isinstance(data, ImageData):
        if train_limit:
            data.x_train, data.y_train = data.x_train[:train_limit], data.y_train[:train_limit]
        if eval_limit:
            data.x_val, data.y_val = data.x_val[:eval_limit], data.y_val[:eval_limit]
            data.x_test, data.y_test = data.x_test[:eval_limit], data.y_test[:eval_limit]
        data.info["splits"] = [len(data.y_train), len(data.y_val), len(data.y_test)]
    else:
        if train_limit:
            data.train = data.train[:train_limit]
        if eval_limit:
            data.val, data.test = data.val[:eval_limit], data.test[:eval_limit]
        data.info["splits"] = [len(data.train), len(data.val), len(data.test)]
    return data
