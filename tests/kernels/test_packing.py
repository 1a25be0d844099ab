"""pack_bits / unpack_bits: the byte layout by hand and by a per-bit loop, round trips, errors."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kernels import pack_bits, packed_nbytes, unpack_bits


def pack_by_loop(values: list[float]) -> list[int]:
    """The layout written out one bit at a time: value i is bit i % 8 of byte i // 8."""
    out = [0] * ((len(values) + 7) // 8)
    for i, v in enumerate(values):
        if v >= 0:
            out[i // 8] |= 1 << (i % 8)
    return out


def test_layout_by_hand():
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, -1.0, 1.0])
    packed = pack_bits(signs)
    assert packed.dtype == torch.uint8
    assert packed.tolist() == [0b01111001, 0b1]
    assert torch.equal(unpack_bits(packed, (9,)), signs)


@given(st.lists(st.floats(-2.0, 2.0, width=32), max_size=70))
def test_layout_matches_a_per_bit_loop(values):
    packed = pack_bits(torch.tensor(values, dtype=torch.float32))
    assert packed.tolist() == pack_by_loop(values)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1023])
def test_round_trip_on_odd_sizes(n):
    w = torch.randn(n, generator=torch.Generator().manual_seed(n))
    packed = pack_bits(w)
    assert packed.shape == (packed_nbytes(n),) == ((n + 7) // 8,)
    assert torch.equal(unpack_bits(packed, (n,)), torch.where(w >= 0, 1.0, -1.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int8,
                                   torch.int64])
def test_round_trip_keeps_shape_and_gives_the_dtype_asked_for(dtype):
    w = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(0))
    signs = torch.where(w >= 0, 1, -1).to(dtype)
    out = unpack_bits(pack_bits(signs), signs.shape, dtype=dtype)
    assert out.dtype == dtype and torch.equal(out, signs)


def test_bool_and_integer_inputs():
    mask = torch.tensor([True, False, True, True, False])
    assert torch.equal(pack_bits(mask), pack_bits(torch.tensor([1, -1, 1, 1, -1])))
    assert torch.equal(unpack_bits(pack_bits(mask), (5,), dtype=torch.int8),
                       torch.tensor([1, -1, 1, 1, -1], dtype=torch.int8))


def test_zero_is_plus_one():
    packed = pack_bits(torch.tensor([0.0, -0.0, -1e-30, 0.0]))  # -0.0 >= 0 holds
    assert torch.equal(unpack_bits(packed, (4,)), torch.tensor([1.0, 1.0, -1.0, 1.0]))


def test_padding_bits_are_ignored():
    packed = torch.tensor([0b10101010, 0b11111110], dtype=torch.uint8)  # bits 9..15 are padding
    want = torch.tensor([-1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    assert torch.equal(unpack_bits(packed, (9,)), want)


def test_empty():
    packed = pack_bits(torch.empty(0, 3))
    assert packed.shape == (0,) and packed.dtype == torch.uint8
    assert unpack_bits(packed, (0, 3)).shape == (0, 3)


def test_non_contiguous_input_packs_in_row_major_order_and_is_not_modified():
    w = torch.randn(6, 11, generator=torch.Generator().manual_seed(1))
    w_t = w.t()  # (11, 6) view, not contiguous
    assert torch.equal(pack_bits(w_t), pack_bits(w_t.contiguous()))
    assert torch.equal(w_t, w.t())


def test_packed_nbytes():
    assert [packed_nbytes(n) for n in (0, 1, 8, 9, 16)] == [0, 1, 1, 2, 2]
    assert packed_nbytes(9, bits=3) == 4 and packed_nbytes(5, bits=8) == 5
    with pytest.raises(ValueError, match="numel: expected an int >= 0, got -1"):
        packed_nbytes(-1)
    with pytest.raises(ValueError, match=r"bits: expected an int in \[1, 8\], got 9"):
        packed_nbytes(4, bits=9)


def test_bad_arguments_name_the_problem():
    packed = pack_bits(torch.ones(9))
    with pytest.raises(ValueError, match=r"packed: .*shape \(1,\) for shape \(8,\), got \(2,\)"):
        unpack_bits(packed, (8,))
    with pytest.raises(ValueError, match=r"packed: .*\(2,\) for shape \(9,\), got \(1, 2\)"):
        unpack_bits(packed[None], (9,))
    with pytest.raises(TypeError, match=r"packed: .*torch\.uint8 tensor, got torch\.int64"):
        unpack_bits(packed.long(), (9,))
    for dtype in (torch.uint8, torch.bool):
        with pytest.raises(TypeError, match=rf"dtype: .*hold -1.*got {dtype}"):
            unpack_bits(packed, (9,), dtype=dtype)
    with pytest.raises(TypeError, match=r"signs: expected a real or bool dtype, got .*complex64"):
        pack_bits(torch.ones(3, dtype=torch.complex64))
