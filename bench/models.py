"""Models: the paper's MLP, VGG-like CNN and char-level LSTM, plus ResNet-20/18 and a small
char-level Transformer decoder.

Every Linear/Conv2d weight and LSTM matrix is quantizable (the paper binarizes every FNN layer,
first and last included); the output layer of a language model stays full precision
(``full_precision = True``), as in the reference LSTM code. Batch norm and biases are always full
precision. `act` is ``relu`` (``gelu`` in the Transformer) or ``sign`` for methods that binarize
activations; the input itself is never binarized.

Example:
    >>> from bench.config import RunConfig
    >>> m = build_model(RunConfig(model="mlp", hidden=32, layers=2), in_shape=(1, 28, 28), classes=10)
    >>> m(torch.zeros(5, 1, 28, 28)).shape
    torch.Size([5, 10])
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bench.config import RunConfig
from bench.layers import LSTM, SignActivation
from bench.methods import get_method

__all__ = ["MODELS", "CharTransformer", "LSTMLanguageModel", "build_model"]

BN_EPS = 1e-4  # the reference BN adds 1e-4 to the std; PyTorch's to the variance (close enough)


def _act(kind: str) -> nn.Module:
    return {"relu": nn.ReLU(), "gelu": nn.GELU(), "sign": SignActivation()}[kind]


class MLP(nn.Module):
    """(Linear -> BN -> act) x layers -> Linear -> BN: the paper's 784-2048x3-10 with defaults."""

    def __init__(self, in_features: int, classes: int, hidden: int, layers: int, act: str):
        super().__init__()
        blocks: list[nn.Module] = [nn.Flatten()]
        for i in range(layers):
            blocks += [nn.Linear(in_features if i == 0 else hidden, hidden),
                       nn.BatchNorm1d(hidden, eps=BN_EPS), _act(act)]
        self.features = nn.Sequential(*blocks)
        self.out = nn.Linear(hidden, classes)
        self.out_bn = nn.BatchNorm1d(classes, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_bn(self.out(self.features(x)))  # (B, classes)


class CNN(nn.Module):
    """(2xK C3)-MP2-(2x2K C3)-MP2-(2x4K C3)-MP2-(2x hidden FC)-classes, each layer followed by
    [max-pool] -> BN -> act (the paper's CIFAR-10/SVHN net, its section 4)."""

    def __init__(self, in_shape: tuple[int, ...], classes: int, width: int, hidden: int, act: str):
        super().__init__()
        channels, size = in_shape[0], in_shape[1]
        blocks: list[nn.Module] = []
        for i, out in enumerate((width, width, 2 * width, 2 * width, 4 * width, 4 * width)):
            blocks += [nn.Conv2d(channels, out, 3, padding=1)]
            if i % 2 == 1:  # the second conv of each pair pools
                blocks.append(nn.MaxPool2d(2))
                size //= 2
            blocks += [nn.BatchNorm2d(out, eps=BN_EPS), _act(act)]
            channels = out
        blocks.append(nn.Flatten())
        features = channels * size * size
        for i in range(2):
            blocks += [nn.Linear(features if i == 0 else hidden, hidden),
                       nn.BatchNorm1d(hidden, eps=BN_EPS), _act(act)]
        self.features = nn.Sequential(*blocks)
        self.out = nn.Linear(hidden, classes)
        self.out_bn = nn.BatchNorm1d(classes, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_bn(self.out(self.features(x)))


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, act: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act1, self.act2 = _act(act), _act(act)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet for small images: 3x3 stem, stages of basic blocks, global average pool, Linear.

    ``resnet20``: 3 stages x 3 blocks, widths w, 2w, 4w (He et al. 2016, CIFAR); ``resnet18``:
    4 stages x 2 blocks, widths w..8w, with a 3x3 stem and no stem max-pool for 32x32 inputs.
    """

    def __init__(self, in_shape: tuple[int, ...], classes: int, width: int,
                 blocks: tuple[int, ...], act: str):
        super().__init__()
        self.stem = nn.Conv2d(in_shape[0], width, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        self.stem_act = _act(act)
        stages, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2 ** i
            for j in range(n):
                stages.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1, act))
                cin = cout
        self.stages = nn.Sequential(*stages)
        self.out = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem_act(self.stem_bn(self.stem(x))))  # (B, C, h, w)
        return self.out(x.mean(dim=(2, 3)))


class LSTMLanguageModel(nn.Module):
    """Char-level LSTM (one-hot input) with a full-precision softmax layer (reference RNN code)."""

    def __init__(self, vocab: int, hidden: int, layers: int, act: str):
        super().__init__()
        self.lstm = LSTM(vocab, hidden, layers, activation="sign" if act == "sign" else "tanh")
        self.head = nn.Linear(hidden, vocab)
        self.head.full_precision = True
        nn.init.normal_(self.head.weight, 0.0, 0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x))  # (B, T, V)


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, act: str):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.act = _act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class CharTransformer(nn.Module):
    """A small pre-LN decoder (GPT-style) over characters; embeddings and head full precision."""

    def __init__(self, vocab: int, dim: int, layers: int, seq_len: int, act: str):
        super().__init__()
        heads = max(1, dim // 64)
        if dim % heads:
            raise ValueError(f"hidden: transformer width {dim} must be a multiple of {heads} heads")
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(seq_len, dim)
        self.blocks = nn.Sequential(*(Block(dim, heads, act) for _ in range(layers)))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        self.head.full_precision = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.tok(x) + self.pos(torch.arange(t, device=x.device))  # (B, T, C)
        return self.head(self.ln(self.blocks(h)))  # (B, T, V)


Builder = Callable[[RunConfig, tuple[int, ...], int, str], nn.Module]
MODELS: dict[str, Builder] = {
    "mlp": lambda c, shape, n, act: MLP(math.prod(shape), n, c.hidden, c.layers, act),
    "cnn": lambda c, shape, n, act: CNN(shape, n, c.width, c.hidden, act),
    "resnet20": lambda c, shape, n, act: ResNet(shape, n, c.width, (3, 3, 3), act),
    "resnet18": lambda c, shape, n, act: ResNet(shape, n, c.width, (2, 2, 2, 2), act),
    "lstm": lambda c, shape, n, act: LSTMLanguageModel(n, c.hidden, c.layers, act),
    "transformer": lambda c, shape, n, act: CharTransformer(n, c.hidden, c.layers, c.seq_len,
                                                            "gelu" if act == "relu" else act),
}


def build_model(config: RunConfig, *, in_shape: tuple[int, ...] = (), classes: int) -> nn.Module:
    """Build `config.model` for inputs of `in_shape` (images) and `classes` outputs (the
    vocabulary size for language models)."""
    if config.model not in MODELS:
        raise ValueError(f"unknown model {config.model!r}; valid: {', '.join(MODELS)}")
    act = "sign" if get_method(config.method).activations == "sign" else "relu"
    return MODELS[config.model](config, in_shape, classes, act)
