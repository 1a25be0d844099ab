"""pack_rows / unpack_rows and packed_linear: layout by a per-bit loop, round trips, every backend
against an independent float64 computation, exact results on integer inputs, errors, fallback."""

import warnings

import pytest
import torch

import kernels.packed_matmul as pm
from kernels import pack_bits, pack_rows, packed_linear, unpack_rows
from kernels._cpp import ExtensionBuildError, load_extension

SHAPES = ((5, 13), (31, 777), (1, 1), (17, 64), (3, 100))  # (out, in): odd sizes, a 64-byte row
BATCHES = (1, 7, 64)


def random_codes(out: int, n: int, bits: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**bits, (out, n), dtype=torch.uint8, generator=g)


def pack_by_loop(codes: list[list[int]], bits: int) -> list[list[int]]:
    """The layout one bit at a time: bit t of code j is bit (j*bits + t) of the row's stream."""
    rows = []
    for row in codes:
        out = [0] * ((len(row) * bits + 7) // 8)
        for j, code in enumerate(row):
            for t in range(bits):
                if code >> t & 1:
                    pos = j * bits + t
                    out[pos // 8] |= 1 << (pos % 8)
        rows.append(out)
    return rows


def float_truth(x, codes, lut, scale, bias):
    """x @ (scale * lut[codes]).T + bias, in float64, from the unpacked codes."""
    w = scale.double()[:, None] * lut.double()[codes.long()]
    y = x.double() @ w.T
    return y if bias is None else y + bias.double()


def problem(out, n, bits, batch, seed, bias=True):
    g = torch.Generator().manual_seed(seed)
    codes = random_codes(out, n, bits, seed)
    lut = torch.randn(2**bits, generator=g)
    scale = torch.rand(out, generator=g) + 0.5
    b = torch.randn(out, generator=g) if bias else None
    x = torch.randn(batch, n, generator=g)
    return x, codes, lut, scale, b


def assert_close_to_truth(y, want, n):
    # float32 sums of n terms of size ~1: error ~ sqrt(n) * 2^-24 * |terms|; 1e-4 * sqrt(n) is loose
    # enough for any summation order and tight enough to catch a wrong code or row.
    assert y.dtype == torch.float32 and y.shape == want.shape
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-4 * (n**0.5 + 1))


@pytest.fixture(scope="module")
def cpp():
    """The C++ extension, built once per test session; a failed build fails the test (no skip)."""
    ext = pm._extension()
    if isinstance(ext, ExtensionBuildError):
        raise ext
    return ext


# %% Packing

@pytest.mark.parametrize("bits", range(1, 9))
def test_layout_matches_a_per_bit_loop(bits):
    codes = random_codes(4, 11, bits, bits)
    assert pack_rows(codes, bits).tolist() == pack_by_loop(codes.tolist(), bits)


def test_layout_by_hand():
    # 3 bits, codes 5, 6, 7: stream 101 011 111 (LSB first) -> bytes 0b11110101, 0b1
    assert pack_rows(torch.tensor([[5, 6, 7]]), 3).tolist() == [[0b11110101, 0b1]]


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("shape", (*SHAPES, (0, 5), (4, 0)))
def test_round_trip_on_odd_shapes(bits, shape):
    codes = random_codes(*shape, bits, seed=sum(shape) + bits)
    packed = pack_rows(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (shape[0], (shape[1] * bits + 7) // 8)
    assert torch.equal(unpack_rows(packed, bits, shape[1]), codes)


@pytest.mark.parametrize("n", [1, 8, 13, 777])
def test_one_bit_rows_are_pack_bits_of_each_row(n):
    codes = random_codes(5, n, 1, n)
    packed = pack_rows(codes, 1)
    for row, want in zip(codes, packed, strict=True):
        assert torch.equal(pack_bits(2.0 * row.float() - 1.0), want)  # bit 1 = +1


# %% packed_linear against the float truth

@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("batch", BATCHES)
def test_torch_backend(bits, shape, batch):
    x, codes, lut, scale, bias = problem(*shape, bits, batch, seed=bits * 100 + batch)
    y = packed_linear(x, pack_rows(codes, bits), bits, shape[1], lut, scale, bias, backend="torch")
    assert_close_to_truth(y, float_truth(x, codes, lut, scale, bias), shape[1])


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("batch", (*BATCHES, 9, 20))  # 9, 20: a full pass of the batch and a rest
def test_cpp_backend(cpp, bits, shape, batch):
    x, codes, lut, scale, bias = problem(*shape, bits, batch, seed=bits * 100 + batch,
                                         bias=batch != 7)
    y = packed_linear(x, pack_rows(codes, bits), bits, shape[1], lut, scale, bias, backend="cpp")
    assert_close_to_truth(y, float_truth(x, codes, lut, scale, bias), shape[1])


@pytest.mark.parametrize("bits", pm.CPP_LUT_BITS)
@pytest.mark.parametrize("idx_bits", [8, 4])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("batch", BATCHES)
def test_cpp_byte_table_paths(cpp, bits, idx_bits, shape, batch):
    """The portable table paths (taken where the CPU has no AVX-512), called directly."""
    x, codes, lut, scale, bias = problem(*shape, bits, batch, seed=bits + batch)
    packed = pack_rows(codes, bits)
    xp = torch.nn.functional.pad(x, (0, packed.shape[1] * 8 // bits - shape[1]))
    y = cpp.packed_linear(xp, packed, bits, shape[1], lut, scale, bias, idx_bits, False)
    assert_close_to_truth(y, float_truth(x, codes, lut, scale, bias), shape[1])
    fused = cpp.packed_linear(xp, packed, bits, shape[1], lut, scale, bias, idx_bits, True)
    assert torch.equal(fused, torch.relu(y))


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
@pytest.mark.parametrize("bits", [1, 2, 3])
def test_relu_is_the_plain_result_through_torch_relu(backend, bits):
    """The fused epilogue (C++) and the separate relu (torch, Triton) give torch.relu of the plain
    result exactly, NaN included (max(NaN, 0) is NaN, as torch.relu)."""
    x, codes, lut, scale, bias = problem(17, 64, bits, 7, seed=bits)
    x[3, 5] = float("nan")  # row 3 of y is NaN
    packed = pack_rows(codes, bits)
    plain = packed_linear(x, packed, bits, 64, lut, scale, bias, backend=backend)
    fused = packed_linear(x, packed, bits, 64, lut, scale, bias, backend=backend, relu=True)
    assert fused[3].isnan().all() and (fused[:3] >= 0).all() and (fused[:3] == 0).any()
    torch.testing.assert_close(fused, torch.relu(plain), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("bits", [1, 2, 3])
@pytest.mark.parametrize("shape", [(5, 13), (33, 70)])
@pytest.mark.parametrize("batch", BATCHES)
def test_triton_backend_under_the_interpreter(bits, shape, batch):
    x, codes, lut, scale, bias = problem(*shape, bits, batch, seed=bits + 7 * batch)
    y = packed_linear(x, pack_rows(codes, bits), bits, shape[1], lut, scale, bias,
                      backend="triton")
    assert_close_to_truth(y, float_truth(x, codes, lut, scale, bias), shape[1])


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
@pytest.mark.parametrize("bits,lut", [(1, [-1.0, 1.0]), (2, [-1.0, 0.0, 1.0, 0.0])])
def test_signs_are_exact_on_integer_inputs(backend, bits, lut):
    """Binary and ternary weights, integer x and power-of-two scales: every partial sum is an
    exact float32 integer, so every backend must equal the truth exactly."""
    out, n = 31, 777
    codes = random_codes(out, n, bits, 3)
    x = torch.randint(-8, 9, (7, n), generator=torch.Generator().manual_seed(4)).float()
    scale = 2.0 ** torch.randint(-2, 3, (out,)).float()
    lut = torch.tensor(lut)
    y = packed_linear(x, pack_rows(codes, bits), bits, n, lut, scale, backend=backend)
    assert torch.equal(y.double(), float_truth(x, codes, lut, scale, None))


def test_leading_dims_dtype_and_auto():
    x, codes, lut, scale, bias = problem(6, 21, 1, 12, seed=5)
    packed = pack_rows(codes, 1)
    want = float_truth(x, codes, lut, scale, bias)
    y = packed_linear(x.reshape(3, 4, 21), packed, 1, 21, lut, scale, bias)
    assert y.shape == (3, 4, 6)
    assert_close_to_truth(y.reshape(12, 6), want, 21)
    y16 = packed_linear(x.bfloat16(), packed, 1, 21, lut, scale, bias, backend="cpp")
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.double(), float_truth(x.bfloat16().float(), codes, lut, scale,
                                                         bias), rtol=1e-2, atol=5e-2)


# %% Errors and the fallback

def test_bad_input_raises_a_clear_value_error():
    x, codes, lut, scale, bias = problem(5, 13, 2, 3, seed=0)
    packed = pack_rows(codes, 2)
    with pytest.raises(ValueError, match=r"x: expected a float tensor \(\.\.\., 13\), got torch\.int64"):
        packed_linear(x.long(), packed, 2, 13, lut, scale)
    with pytest.raises(ValueError, match=r"x: expected .* got torch\.float32 of shape \(3, 12\)"):
        packed_linear(x[:, :12], packed, 2, 13, lut, scale)
    with pytest.raises(ValueError, match=r"row_bytes = .* = ceil\(13 \* 2 / 8\) = 4, got shape \(5, 3\)"):
        packed_linear(x, packed[:, :3], 2, 13, lut, scale)
    with pytest.raises(ValueError, match=r"packed: expected a 2-D torch\.uint8 .*got torch\.int8"):
        packed_linear(x, packed.to(torch.int8), 2, 13, lut, scale)
    for bits in (0, 9, 2.0, True):
        with pytest.raises(ValueError, match=r"bits: expected an int in \[1, 8\]"):
            packed_linear(x, packed, bits, 13, lut, scale)
    with pytest.raises(ValueError, match=r"lut: expected a float tensor of shape \(4,\) for bits=2"):
        packed_linear(x, packed, 2, 13, lut[:2], scale)
    with pytest.raises(ValueError, match=r"scale: expected .* shape \(5,\)"):
        packed_linear(x, packed, 2, 13, lut, scale[:4])
    with pytest.raises(ValueError, match=r"bias: expected .* shape \(5,\)"):
        packed_linear(x, packed, 2, 13, lut, scale, bias.long())
    with pytest.raises(ValueError, match=r"backend: expected one of .*got 'cuda'"):
        packed_linear(x, packed, 2, 13, lut, scale, backend="cuda")
    with pytest.raises(ValueError, match=r"codes: expected values in \[0, 4\) for bits=2, got \[0, 4\]"):
        pack_rows(torch.tensor([[0, 4]]), 2)
    with pytest.raises(ValueError, match=r"codes: expected a 2-D integer tensor"):
        pack_rows(torch.zeros(3), 1)
    with pytest.raises(ValueError, match=r"bits: expected an int in \[1, 8\], got 9"):
        unpack_rows(packed, 9, 13)


def test_auto_falls_back_to_torch_with_one_warning(monkeypatch):
    error = ExtensionBuildError("packed_matmul: building the C++ extension failed: no compiler")
    monkeypatch.setattr(pm, "_extension", lambda: error)
    pm._warn_fallback.cache_clear()
    x, codes, lut, scale, bias = problem(5, 13, 1, 3, seed=1)
    packed = pack_rows(codes, 1)
    with pytest.warns(RuntimeWarning, match=r"falls back to unpacking .*no compiler"):
        y = packed_linear(x, packed, 1, 13, lut, scale, bias)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call does not warn again
        packed_linear(x, packed, 1, 13, lut, scale, bias)
    assert_close_to_truth(y, float_truth(x, codes, lut, scale, bias), 13)
    assert not pm.cpp_available()
    with pytest.raises(ExtensionBuildError, match="no compiler"):
        packed_linear(x, packed, 1, 13, lut, scale, backend="cpp")
    pm._warn_fallback.cache_clear()


def test_load_extension_warns_once_and_returns_none_on_a_broken_build(tmp_path, monkeypatch):
    monkeypatch.setenv("LABBENCH_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "broken.cpp"
    src.write_text("int x = ;\n")
    with pytest.warns(RuntimeWarning, match=r"broken: building the C\+\+ extension .* failed"):
        assert load_extension("broken", [src], native=False) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_extension("broken", [src], native=False) is None  # cached: no second build
    with pytest.raises(ExtensionBuildError, match="error"):
        load_extension("broken", [src], native=False, required=True)


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [1, 2, 3, 8])
@pytest.mark.parametrize("batch", BATCHES)
def test_triton_backend_compiled_on_cuda(bits, batch):
    x, codes, lut, scale, bias = problem(31, 777, bits, batch, seed=bits + batch)
    cuda = [t.cuda() for t in (x, pack_rows(codes, bits), lut, scale, bias)]
    y = packed_linear(cuda[0], cuda[1], bits, 777, *cuda[2:], backend="auto")  # auto: Triton
    assert y.is_cuda
    assert_close_to_truth(y.cpu(), float_truth(x, codes, lut, scale, bias), 777)
