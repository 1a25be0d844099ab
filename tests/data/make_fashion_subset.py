"""Regenerate tests/data/fashion-mnist: a stratified subset of Fashion-MNIST in its own IDX format.

Source: Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), the Zalando files.
Train: 360 images per class (3,600; the loader keeps the last sixth, 600, for validation);
test: 100 per class (1,000). Selection and order are fixed by the seed below.

    python tests/data/make_fashion_subset.py [SOURCE_DIR]
"""

import gzip
import sys
from pathlib import Path

import numpy as np

SRC = Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist")
DST = Path(__file__).parent / "fashion-mnist"
PER_CLASS = {"train": 360, "t10k": 100}


def read(path: Path) -> tuple[bytes, np.ndarray]:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)
    return raw[:4], np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def write(path: Path, magic: bytes, array: np.ndarray) -> None:
    header = magic + np.asarray(array.shape, dtype=">u4").tobytes()
    path.write_bytes(gzip.compress(header + array.tobytes(), compresslevel=9, mtime=0))


def main() -> None:
    rng = np.random.default_rng(20170101)
    DST.mkdir(exist_ok=True)
    for split, n in PER_CLASS.items():
        mi, images = read(SRC / f"{split}-images-idx3-ubyte.gz")
        ml, labels = read(SRC / f"{split}-labels-idx1-ubyte.gz")
        pick = np.concatenate([rng.choice(np.flatnonzero(labels == c), n, replace=False)
                               for c in range(10)])
        pick = rng.permutation(pick)
        write(DST / f"{split}-images-idx3-ubyte.gz", mi, images[pick])
        write(DST / f"{split}-labels-idx1-ubyte.gz", ml, labels[pick])


if __name__ == "__main__":
    main()
