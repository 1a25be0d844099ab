"""The names of bench's models and datasets, in one place.

`bench.config` validates a RunConfig against these names, and `bench.models.MODELS` and
`bench.data.DATASETS` are the registries that build what they name; both import from here, which
imports nothing, so config does not have to import the models (torch modules) or the data loaders
to check a name (tests/bench/test_names.py checks that the registries and these names agree).
"""

__all__ = ["CHAR_DATASETS", "DATASETS", "IMAGE_DATASETS", "IMAGE_MODELS", "MODELS", "SEQUENCE_MODELS"]

IMAGE_MODELS = ("mlp", "cnn", "resnet20", "resnet18")  # classify images (or flattened pixels)
SEQUENCE_MODELS = ("lstm", "transformer")  # char-level language models
MODELS = IMAGE_MODELS + SEQUENCE_MODELS

IMAGE_DATASETS = ("fashion-mnist", "mnist", "cifar10", "svhn")
CHAR_DATASETS = ("pysrc", "linux")  # named corpora; any text file is `text:PATH` as well
DATASETS = IMAGE_DATASETS + CHAR_DATASETS
