"""numoe.gguf (read, write): round trips against the `gguf` package (the oracle) and
hostile files, each of which must give a GGUFError at once, never a crash or a hang."""

from __future__ import annotations

import struct
import time

import gguf
import numpy as np
import pytest
import torch

from numoe.gguf import GGUFError, dequantize, open_gguf
from numoe.gguf.write import Lazy, write_gguf

QT = gguf.GGMLQuantizationType
VT = gguf.GGUFValueType


# ---------------------------------------------------------------- raw file builder


def _s(b: bytes | str) -> bytes:
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("<Q", len(b)) + b


def kv_str(key, val) -> bytes:
    return _s(key) + struct.pack("<I", VT.STRING) + _s(val)


def kv_u32(key, val) -> bytes:
    return _s(key) + struct.pack("<II", VT.UINT32, val)


def tinfo(name, ne, type_id, offset) -> bytes:
    return (
        _s(name)
        + struct.pack("<I", len(ne))
        + struct.pack(f"<{len(ne)}Q", *ne)
        + struct.pack("<IQ", type_id, offset)
    )


ARCH = kv_str("general.architecture", "llama")


def build(kvs, tinfos, data=b"", *, version=3, n_kv=None, n_tensors=None, align=32) -> bytes:
    head = b"GGUF" + struct.pack("<I", version)
    head += struct.pack("<QQ", len(tinfos) if n_tensors is None else n_tensors,
                        len(kvs) if n_kv is None else n_kv)  # fmt: skip
    body = head + b"".join(kvs) + b"".join(tinfos)
    body += b"\0" * (-len(body) % align)
    return body + data


def write(tmp_path, blob: bytes, name="bad.gguf"):
    p = tmp_path / name
    p.write_bytes(blob)
    return p


def raises(p, *fragments):
    t0 = time.perf_counter()
    with pytest.raises(GGUFError) as e:
        open_gguf(p)
    assert time.perf_counter() - t0 < 2.0
    msg = str(e.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, (f, msg)
    return msg


# ---------------------------------------------------------------- round trips

META = {
    "llama.block_count": 2,
    "llama.rope.freq_base": 10000.0,
    "llama.expert_weights_norm": True,
    "general.name": "tiny",
    "tokenizer.ggml.tokens": ["<s>", "a", "b", "ü"],
    "tokenizer.ggml.token_type": [3, 1, 1, 1],
    "tokenizer.ggml.scores": [0.0, -1.5, -2.0, -2.5],
    "neg": -3,
    "big": 2**40,
    "forced_u8": (7, VT.UINT8),
    "forced_f64": (0.1, VT.FLOAT64),
    "empty_str": "",
    "empty_list": [],
}


def _tensors(rng):
    return {
        "token_embd.weight": rng.standard_normal((16, 64), dtype=np.float32),
        "blk.0.attn_norm.weight": rng.standard_normal(64, dtype=np.float32),
        "blk.0.ffn_gate_exps.weight": rng.standard_normal((4, 8, 64), dtype=np.float32),
        "blk.0.ffn_gate_inp.weight": rng.standard_normal((4, 64), dtype=np.float32),
        "odd.weight": rng.standard_normal((3, 40), dtype=np.float32),  # 40 % 32 != 0
        "lazy.weight": Lazy((2, 32), lambda: np.full((2, 32), 0.5, np.float32)),
    }


def _keep(name, value):
    return "ffn_gate_inp" in name


@pytest.mark.parametrize("qtype", ["F32", "F16", "bf16", "Q8_0"])
def test_round_trip_against_gguf_reader(tmp_path, qtype):
    rng = np.random.default_rng(0)
    tensors = _tensors(rng)
    p = tmp_path / "m.gguf"
    write_gguf(p, "llama", META, tensors, qtype, keep_f32=_keep)
    g = open_gguf(p)
    ref = gguf.GGUFReader(p)
    q = QT[qtype.upper()]

    assert g.arch == "llama" and g.version == 3
    assert g.get("general.file_type") == {"F32": 0, "F16": 1, "BF16": 32, "Q8_0": 7}[q.name]
    fields = {k: f for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert set(g.meta) == set(fields)
    for k, f in fields.items():
        assert g.meta[k] == f.contents(), k
    assert g.meta["tokenizer.ggml.tokens"] == ["<s>", "a", "b", "ü"]
    assert g.get("llama.expert_weights_norm") is True
    assert g.get("neg") == -3 and g.get("big") == 2**40 and g.get("empty_list") == []
    assert fields["llama.block_count"].types == [VT.UINT32]
    assert fields["tokenizer.ggml.token_type"].types == [VT.ARRAY, VT.INT32]
    assert fields["tokenizer.ggml.scores"].types == [VT.ARRAY, VT.FLOAT32]
    assert fields["forced_u8"].types == [VT.UINT8] and fields["forced_f64"].types == [VT.FLOAT64]
    assert g.get("forced_f64") == 0.1

    assert [t.name for t in ref.tensors] == list(g.tensors)
    for rt in ref.tensors:
        t = g.tensors[rt.name]
        src = tensors[rt.name]
        assert t.shape == tuple(src.shape) == tuple(reversed(rt.shape.tolist()))
        assert t.qtype == rt.tensor_type
        assert t.offset == rt.data_offset and t.nbytes == rt.n_bytes
        stays_f32 = (
            len(t.shape) == 1
            or rt.name == "blk.0.ffn_gate_inp.weight"
            or (rt.name == "odd.weight" and q == QT.Q8_0)  # 40 is not a multiple of 32
        )
        assert t.qtype == (QT.F32 if stays_f32 else q), rt.name
        d = dequantize(t)
        assert d.dtype == torch.float32 and tuple(d.shape) == t.shape
        oracle = gguf.quants.dequantize(rt.data, rt.tensor_type).reshape(t.shape)
        np.testing.assert_array_equal(d.numpy(), oracle)
        x = src.make() if isinstance(src, Lazy) else src
        tol = {QT.F32: 0, QT.F16: 1e-3, QT.BF16: 8e-3, QT.Q8_0: 1.2 / 127}[t.qtype]
        amax = np.abs(x).max()
        np.testing.assert_allclose(d.numpy(), x, rtol=0, atol=tol * amax + 1e-7, err_msg=rt.name)


def _random_blocks(rng, qtype: QT, n_blocks: int) -> np.ndarray:
    """Random but valid block bytes: every fp16 scale field a small finite value."""
    _, size = gguf.GGML_QUANT_SIZES[qtype]
    b = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    half = lambda n: rng.uniform(-0.1, 0.1, (n_blocks, n)).astype("<f2").view(np.uint8)
    if qtype in (QT.Q4_0, QT.Q8_0):
        b[:, 0:2] = half(1)
    elif qtype in (QT.Q4_K, QT.Q5_K):
        b[:, 0:4] = half(2)  # d, dmin
    elif qtype == QT.Q6_K:
        b[:, size - 2 :] = half(1)  # d at the end
    return b


@pytest.mark.parametrize("qtype", [QT.Q4_0, QT.Q8_0, QT.Q4_K, QT.Q5_K, QT.Q6_K])
def test_quantized_types_match_gguf_dequantize(tmp_path, qtype):
    rng = np.random.default_rng(int(qtype))
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    shapes = {"w2": (6, 2 * 256), "w3": (2, 3, 256)}
    p = tmp_path / "q.gguf"
    w = gguf.GGUFWriter(p, "llama")
    raws = {}
    for name, shape in shapes.items():
        n_rows = int(np.prod(shape[:-1]))
        raw = _random_blocks(rng, qtype, n_rows * shape[-1] // block)
        raw = raw.reshape(shape[:-1] + (shape[-1] // block * size,))
        raws[name] = raw
        w.add_tensor(name, raw, raw_dtype=qtype)
    if qtype == QT.Q4_0:  # the package quantizes Q4_0 itself too
        x = rng.standard_normal((4, 64), dtype=np.float32)
        raws["quantized"] = gguf.quants.quantize(x, qtype)
        w.add_tensor("quantized", raws["quantized"], raw_dtype=qtype)
        shapes["quantized"] = (4, 64)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    g = open_gguf(p)
    for name, shape in shapes.items():
        t = g.tensor(name, shape)
        assert t.qtype == qtype
        np.testing.assert_array_equal(np.asarray(t.data), raws[name])
        d = dequantize(t)
        assert tuple(d.shape) == shape and d.dtype == torch.float32
        oracle = gguf.quants.dequantize(raws[name], qtype).reshape(shape)
        assert np.isfinite(oracle).all()
        np.testing.assert_array_equal(d.numpy(), oracle)
    if "quantized" in raws:
        assert np.abs(dequantize(g.tensor("quantized")).numpy() - x).max() < 0.25


def test_tensor_data_is_memory_mapped(tmp_path):
    p = tmp_path / "m.gguf"
    x = np.arange(64 * 32, dtype=np.float32).reshape(64, 32)
    write_gguf(p, "llama", {}, {"w": x, "v": x[0].copy()}, "F32")
    g = open_gguf(p)
    t = g.tensor("w", (64, 32))
    base = t.data
    while not isinstance(base, np.memmap) and base.base is not None:
        base = base.base
    assert isinstance(base, np.memmap)
    assert np.shares_memory(t.data, g.mmap)
    assert not t.data.flags.writeable
    assert t.data.dtype == np.uint8 and t.data.shape == (64, 32 * 4)
    assert t.offset % 32 == 0 and t.offset >= g.data_offset
    assert bytes(g.mmap[t.offset : t.offset + t.nbytes]) == x.tobytes()
    d = dequantize(t)
    d += 1  # a copy: the file is untouched
    assert np.array_equal(dequantize(t).numpy(), x)
    assert "w" in g.describe() or "2 tensors" in g.describe()


def test_large_vocabulary_opens_fast(tmp_path):
    p = tmp_path / "v.gguf"
    n = 150_000
    meta = {
        "tokenizer.ggml.tokens": [f"tok{i}" for i in range(n)],
        "tokenizer.ggml.scores": np.linspace(0, 1, n, dtype=np.float32),
        "tokenizer.ggml.token_type": [1] * n,
    }
    write_gguf(p, "qwen3moe", meta, {"w": np.zeros((2, 32), np.float32)})
    t0 = time.perf_counter()
    g = open_gguf(p)
    assert time.perf_counter() - t0 < 1.5
    assert (
        len(g.meta["tokenizer.ggml.tokens"]) == n
        and g.meta["tokenizer.ggml.tokens"][-1] == "tok149999"
    )
    assert isinstance(g.meta["tokenizer.ggml.scores"][1], float)
    assert isinstance(g.meta["tokenizer.ggml.token_type"][0], int)


def test_metadata_and_tensor_lookup_errors(tmp_path):
    p = tmp_path / "m.gguf"
    write_gguf(p, "deepseek2", {"deepseek2.block_count": 3}, {"x": np.zeros((4, 32), np.float32)})
    g = open_gguf(p)
    with pytest.raises(GGUFError, match="nope") as e:
        g.get("nope")
    assert str(p) in str(e.value)
    assert g.get("nope", None) is None and g.get("nope", 5) == 5
    assert g.arch_get("block_count") == 3
    with pytest.raises(GGUFError, match="deepseek2.leading_dense_block_count"):
        g.arch_get("leading_dense_block_count")
    assert g.arch_get("leading_dense_block_count", 1) == 1
    assert g.has("x") and not g.has("y")
    with pytest.raises(GGUFError, match="'y'"):
        g.tensor("y")
    with pytest.raises(GGUFError) as e:
        g.tensor("x", (32, 4))
    assert "'x'" in str(e.value) and "(4, 32)" in str(e.value) and "(32, 4)" in str(e.value)
    assert g.tensor("x", (4, 32)).shape == (4, 32)
    # shard 1 of a split model whose name does not say where the others are
    # (tests/test_gguf_split.py has the split models)
    q = tmp_path / "split.gguf"
    meta = {
        "split.no": (0, VT.UINT16),
        "split.count": (3, VT.UINT16),
        "split.tensors.count": (3, VT.INT32),
    }
    write_gguf(q, "llama", meta, {"x": np.zeros((4, 32), np.float32)})
    with pytest.raises(GGUFError, match="does not end in -00001-of-00003.gguf") as e:
        open_gguf(q)
    assert str(e.value).startswith(f"{q}: ")


def test_writer_rejects_bad_input_and_leaves_no_file(tmp_path):
    p = tmp_path / "m.gguf"
    x = {"w": np.zeros((2, 32), np.float32)}
    with pytest.raises(ValueError, match="Q4_K"):
        write_gguf(p, "llama", {}, x, "Q4_K")
    with pytest.raises(TypeError, match="'k'"):
        write_gguf(p, "llama", {"k": object()}, x)
    with pytest.raises(TypeError, match="'k'"):
        write_gguf(p, "llama", {"k": [1, "a"]}, x)
    bad = {"w": Lazy((2, 32), lambda: np.zeros((3, 32), np.float32))}
    with pytest.raises(ValueError, match="'w'"):
        write_gguf(p, "llama", {}, bad)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- hostile files

DATA_W = np.arange(64, dtype=np.float32).tobytes()  # tensor 'w', ne [32, 2], F32


def good(**kw) -> bytes:
    kvs = [ARCH, kv_u32("llama.block_count", 1)]
    return build(kvs, [tinfo("w", [32, 2], QT.F32, 0)], DATA_W + b"\0" * 0, **kw)


def test_raw_builder_file_is_valid(tmp_path):
    g = open_gguf(write(tmp_path, good()))
    assert g.arch == "llama" and g.tensor("w", (2, 32)).qtype == QT.F32
    assert np.array_equal(dequantize(g.tensor("w")).numpy().ravel(), np.arange(64))
    g2 = open_gguf(write(tmp_path, good(version=2), "v2.gguf"))
    assert g2.version == 2


def test_truncated_at_every_cut(tmp_path):
    rng = np.random.default_rng(1)
    p = tmp_path / "m.gguf"
    meta = {"tokenizer.ggml.tokens": ["a", "bb", "ccc"], "x.scores": [1.0, 2.0], "s": "hi"}
    write_gguf(p, "llama", meta, {"w": rng.standard_normal((4, 64), dtype=np.float32),
                                  "n": np.ones(64, np.float32)}, "Q8_0")  # fmt: skip
    blob = p.read_bytes()
    open_gguf(p)
    cuts = sorted(set(np.linspace(0, len(blob) - 1, 40).astype(int).tolist()) | set(range(60)))
    for cut in cuts:
        q = write(tmp_path, blob[:cut], "cut.gguf")
        try:
            open_gguf(q)
        except GGUFError as e:
            assert "\n" not in str(e)
        else:
            raise AssertionError(f"cut at {cut} of {len(blob)} opened")


def test_random_corruption_never_crashes(tmp_path):
    """Flip bytes in the header: the file either opens or gives a GGUFError."""
    rng = np.random.default_rng(2)
    p = tmp_path / "m.gguf"
    meta = {"tokenizer.ggml.tokens": ["a", "bb"], "f": [1.0, 2.0], "s": "hi"}
    write_gguf(p, "llama", meta, {"w": np.ones((2, 32), np.float32)}, "F16")
    blob = bytearray(p.read_bytes())
    header_end = open_gguf(p).data_offset
    for _ in range(300):
        b = bytearray(blob)
        for i in rng.integers(4, header_end, rng.integers(1, 4)):
            b[i] = int(rng.integers(0, 256))
        q = write(tmp_path, bytes(b), "c.gguf")
        try:
            open_gguf(q)
        except GGUFError:
            pass


def test_not_a_file(tmp_path):
    raises(tmp_path / "missing.gguf", "no such file")
    raises(tmp_path, "directory")
    raises(write(tmp_path, b""), "empty")
    raises(write(tmp_path, b"GG"), "not a GGUF file")
    raises(write(tmp_path, b"PK\x03\x04" + b"\0" * 100), "not a GGUF file", "PK")


def test_bad_versions(tmp_path):
    raises(write(tmp_path, good(version=1)), "version 1")
    raises(write(tmp_path, good(version=99)), "version 99")
    raises(write(tmp_path, good(version=3 << 24)), "big-endian")
    raises(write(tmp_path, b"GGUF\x03\0\0"), "truncated")


def test_absurd_counts_and_lengths(tmp_path):
    raises(write(tmp_path, good(n_kv=2**60)), "key count", str(2**60))
    raises(write(tmp_path, good(n_tensors=2**60)), "tensor count", str(2**60))
    raises(write(tmp_path, good(n_kv=3)), "truncated")  # count a little too large
    long_key = struct.pack("<Q", 2**62) + b"general.architecture"
    raises(write(tmp_path, build([long_key], [])), "key #0", "length")
    long_val = _s("general.architecture") + struct.pack("<IQ", VT.STRING, 2**62) + b"llama"
    raises(write(tmp_path, build([long_val], [])), "general.architecture", "truncated")
    for itype, n in [(VT.UINT32, 2**61), (VT.STRING, 2**60), (VT.UINT8, 2**63)]:
        arr = _s("a") + struct.pack("<IIQ", VT.ARRAY, itype, n) + b"\0" * 64
        raises(write(tmp_path, build([ARCH, arr], [])), "'a'", "array")
    tname = struct.pack("<Q", 2**62) + b"w"
    raises(write(tmp_path, build([ARCH], [tname])), "tensor info #0")


def test_bad_value_types(tmp_path):
    raises(write(tmp_path, build([ARCH, _s("k") + struct.pack("<I", 13)], [])), "'k'", "13")
    nested = _s("k") + struct.pack("<II", VT.ARRAY, VT.ARRAY) + struct.pack("<Q", 1)
    raises(write(tmp_path, build([ARCH, nested + b"\0" * 32], [])), "nested")
    bad_el = _s("k") + struct.pack("<IIQ", VT.ARRAY, 77, 1) + b"\0" * 16
    raises(write(tmp_path, build([ARCH, bad_el], [])), "'k'", "77")
    raises(write(tmp_path, build([ARCH, ARCH], [])), "duplicate", "general.architecture")
    raises(write(tmp_path, build([kv_u32("x", 1)], [])), "general.architecture")
    arch_int = _s("general.architecture") + struct.pack("<II", VT.UINT32, 1)
    raises(write(tmp_path, build([arch_int], [])), "general.architecture", "string")
    raises(write(tmp_path, build([ARCH, kv_str(b"\xff\xfe", "x")], [])), "UTF-8")
    for a in (0, 3, 48):
        kvs = [ARCH, kv_u32("general.alignment", a)]
        raises(write(tmp_path, build(kvs, [], align=32)), "alignment", str(a))


def test_bad_tensor_infos(tmp_path):
    def one(ne, type_id=QT.F32, offset=0, data=DATA_W, name="blk.0.attn_q.weight"):
        return write(tmp_path, build([ARCH], [tinfo(name, ne, type_id, offset)], data))

    raises(one([32, 2], offset=0, data=DATA_W[:100]), "'blk.0.attn_q.weight'", "past end of file")
    raises(one([32, 2], offset=2**40), "past end of file")
    raises(one([32, 2], offset=8), "'blk.0.attn_q.weight'", "not aligned")
    raises(one([32, 2], type_id=200), "'blk.0.attn_q.weight'", "unknown type id 200")
    raises(one([]), "n_dims 0")
    raises(one([1] * 9), "n_dims 9")
    raises(one([32, 0]), "zero dimension")
    raises(one([2**32, 2**32, 2**32]), "overflow")
    raises(one([33, 2], type_id=QT.Q8_0), "block size")
    two = [tinfo("a", [32, 2], QT.F32, 0), tinfo("b", [32, 2], QT.F32, 128)]
    raises(write(tmp_path, build([ARCH], two, DATA_W * 2)), "'a'", "'b'", "overlap")
    dup = [tinfo("a", [32], QT.F32, 0), tinfo("a", [32], QT.F32, 128)]
    raises(write(tmp_path, build([ARCH], dup, DATA_W * 2)), "duplicate tensor 'a'")


def test_unsupported_real_type_names_tensor_and_type(tmp_path):
    # Q8_K: a real GGML type that numoe only has as an activation, never as a weight
    _, size = gguf.GGML_QUANT_SIZES[QT.Q8_K]
    infos = [tinfo("blk.0.ffn_down_exps.weight", [256, 2], QT.Q8_K, 0),
             tinfo("w", [32, 2], QT.F32, 608)]  # fmt: skip
    p = write(tmp_path, build([ARCH], infos, b"\0" * 608 + DATA_W))
    g = open_gguf(p)  # metadata and other tensors stay usable
    assert g.tensor("w").shape == (2, 32)
    assert g.tensors["blk.0.ffn_down_exps.weight"].nbytes == 2 * size
    for call in (
        lambda: g.tensor("blk.0.ffn_down_exps.weight"),
        lambda: dequantize(g.tensors["blk.0.ffn_down_exps.weight"]),
        g.check_supported,
    ):
        with pytest.raises(GGUFError) as e:
            call()
        assert "blk.0.ffn_down_exps.weight" in str(e.value) and "Q8_K" in str(e.value)
