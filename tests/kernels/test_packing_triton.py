"""pack_bits' Triton path against the torch reference (under the interpreter on CPU)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import pack_bits, unpack_bits
from kernels.packing import TRITON_DTYPES

SIZES = (0, 1, 7, 8, 9, 1023, 5000)  # 5000: several programs of 1024 elements on CPU


@settings(max_examples=20)
@given(st.sampled_from(TRITON_DTYPES), st.sampled_from(SIZES), st.integers(0, 2**16))
def test_matches_the_reference(dtype, n, seed):
    x = torch.randn(n, generator=torch.Generator().manual_seed(seed)) * 3
    if n >= 3 and dtype.is_floating_point:
        x[:3] = torch.tensor([0.0, -0.0, float("nan")])  # +1, +1, and NaN stored as 0
    x = x > 0 if dtype == torch.bool else x.to(dtype)
    packed = pack_bits(x, backend="triton")
    assert packed.dtype == torch.uint8
    assert torch.equal(packed, pack_bits(x, backend="torch"))


def test_strided_input_packs_in_row_major_order():
    x = torch.randn(21, 13).t()  # (13, 21), not contiguous
    assert torch.equal(pack_bits(x, backend="triton"), pack_bits(x.contiguous(), backend="torch"))


@pytest.mark.parametrize("n", [1, 9, 1023])
def test_round_trip(n):
    signs = torch.where(torch.randn(n) >= 0, 1.0, -1.0)
    packed = pack_bits(signs, backend="triton")
    assert torch.equal(unpack_bits(packed, signs.shape), signs)
