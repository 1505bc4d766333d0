"""Split GGUF models (llama.cpp's gguf-split: PREFIX-00001-of-0000N.gguf ...) read in place.

The shards are written by the gguf package's GGUFWriter with split_max_tensors, which lays
them out as gguf-split does: every shard a whole GGUF file with split.no (u16, 0-based),
split.count (u16) and split.tensors.count (i32, all tensors); the first shard holds all the
metadata, the others only the split.* keys; tensors in file order, a new shard every N
tensors. Checked against the unsplit file: the same metadata and tensor bytes, each tensor a
view into its own shard's map, logits bit for bit (prefill and decode), `numoe run` with -m
the first shard, a later shard or the directory, the broken sets (one-line errors naming the
file), and doctor, bench and quantize on a split model.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from numoe.cli import main
from numoe.gguf import GGUFError, open_gguf
from numoe.gguf.quantize import _kv_types
from numoe.gguf.write import _Writer
from numoe.models import load
from numoe.synth import synth

VT = gguf.GGUFValueType
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")


def split_gguf(src, out: Path, max_tensors: int) -> list[Path]:
    """Write GGUF `src` as shards of at most `max_tensors` tensors, named from `out`
    (out.stem-00001-of-0000N.gguf beside it); metadata with its stored types, tensor bytes
    as they are. Returns the shard paths."""
    g = open_gguf(src)
    types = _kv_types(g.path)
    w = _Writer(str(out), g.arch, split_max_tensors=max_tensors)
    for key, value in g.meta.items():
        if key != "general.architecture":  # the writer adds it first
            vt, sub = types[key]
            w.add_key_value(key, value, vt, sub_type=sub)
    for name, t in g.tensors.items():
        w.add_tensor(name, np.asarray(t.data), raw_dtype=t.qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    n = len(w.tensors)
    return [out.with_name(f"{out.stem}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    """A tiny DeepSeek-V2-shaped model (MLA, a dense layer, routed and shared experts)."""
    path = tmp_path_factory.mktemp("whole") / "tiny-v2.gguf"
    synth("tiny-v2", path, "Q4_K_M")
    return path


@pytest.fixture(scope="module")
def shards(whole, tmp_path_factory) -> list[Path]:
    """`whole` in three shards (10, 10 and 9 tensors), alone in their directory."""
    paths = split_gguf(whole, tmp_path_factory.mktemp("split") / "tiny.gguf", 10)
    assert len(paths) == 3 and all(p.is_file() for p in paths)
    return paths


@pytest.fixture
def copy(shards, tmp_path) -> list[Path]:
    """A fresh copy of the shards, to break."""
    d = tmp_path / "m"
    d.mkdir()
    return [Path(shutil.copy(p, d / p.name)) for p in shards]


def _logits(path, n_decode: int = 3) -> list[torch.Tensor]:
    """Prefill logits of a prompt, then those of `n_decode` greedy decode steps."""
    _, model = load(open_gguf(path))
    ids, cache = [1, 5, 9, 2, 7, 3], model.new_cache(32)
    out = [model.forward(torch.tensor(ids), cache, 0)]
    for i in range(n_decode):
        t = int(out[-1][-1].argmax())
        out.append(model.forward(torch.tensor([t]), cache, len(ids) + i))
    return out


# --- the layout and the reader -----------------------------------------------------------


def test_shards_are_laid_out_as_gguf_split_does(whole, shards):
    g0 = open_gguf(whole)
    names = list(g0.tensors)
    refs = [gguf.GGUFReader(p) for p in shards]  # the reference reader, file by file
    for i, r in enumerate(refs):
        keys = [k for k in r.fields if not k.startswith("GGUF.")]
        if i == 0:  # all the model's metadata, then the split keys
            assert keys == [*g0.meta, *SPLIT_KEYS]
        else:
            assert keys == list(SPLIT_KEYS)
        assert [r.fields[k].types for k in SPLIT_KEYS] == [[VT.UINT16], [VT.UINT16], [VT.INT32]]
        assert [r.fields[k].contents() for k in SPLIT_KEYS] == [i, 3, len(names)]
        # gguf-split --split-max-tensors 10: tensors in order, a new shard every 10
        assert [t.name for t in r.tensors] == names[10 * i : 10 * (i + 1)]


def test_open_reads_every_shard_in_place(whole, shards):
    g0, g = open_gguf(whole), open_gguf(shards[0])
    assert g.paths == shards and g.path == shards[0] and len(g.maps) == len(g.shards) == 3
    assert g.meta == g0.meta | {"split.no": 0, "split.count": 3, "split.tensors.count": 29}
    assert g.arch == g0.arch and list(g.tensors) == list(g0.tensors)
    assert g.file_size == sum(p.stat().st_size for p in shards)
    for name, t0 in g0.tensors.items():
        t = g.tensors[name]
        assert (t.shape, t.qtype) == (t0.shape, t0.qtype)
        assert np.array_equal(np.asarray(t.data), np.asarray(t0.data))
        assert t.shard == list(g0.tensors).index(name) // 10
        # a view into its own shard's map, no copy
        assert np.shares_memory(t.data, g.maps[t.shard]) and not t.data.flags.writeable
        assert not any(np.shares_memory(t.data, m) for m in g.maps if m is not g.maps[t.shard])
        assert (
            bytes(g.maps[t.shard][t.offset : t.offset + t.nbytes]) == np.asarray(t.data).tobytes()
        )
    assert "in 3 files" in g.describe()

    # -m a later shard: the set, opened from its first shard; -m the directory: the same
    for other in (open_gguf(shards[2]), open_gguf(shards[0].parent)):
        assert other.paths == shards and list(other.tensors) == list(g.tensors)
    # a directory holding one unsplit file (KTransformers' --gguf_path)
    assert open_gguf(whole.parent).paths == [whole]


def test_prefault_maps_every_shard(shards):
    from numoe.runtime import memory

    g = open_gguf(shards[0])
    assert memory.prefault(g) is True
    for m in g.maps:
        assert memory.pages_per_node(m).get(memory.NOT_RESIDENT, 0) == 0


def test_logits_are_bit_identical_to_the_unsplit_file(whole, shards):
    want = _logits(whole)
    for path in (shards[0], shards[0].parent):
        got = _logits(path)
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)


# --- the command line --------------------------------------------------------------------


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_run_with_the_first_shard_a_later_one_or_the_directory(capsys, whole, shards):
    args = ("-p", "Hello there", "-n", "8", "--temp", "0", "--ignore-eos")
    rc, want, err = _run(capsys, "run", "-m", str(whole), *args)
    assert rc == 0 and want and "files" not in err
    for path in (shards[0], shards[1], shards[0].parent):
        rc, out, err = _run(capsys, "run", "-m", str(path), *args)
        assert rc == 0 and out == want
        assert "3 files, 29 tensors" in err


def _set_key(path: Path, key: str, value: int) -> None:
    """Overwrite integer metadata `key` in place (same type)."""
    b = bytearray(path.read_bytes())
    at = b.index(struct.pack("<Q", len(key)) + key.encode()) + 8 + len(key)
    vtype = struct.unpack_from("<I", b, at)[0]
    struct.pack_into({VT.UINT16: "<H", VT.INT32: "<i"}[vtype], b, at + 4, value)
    path.write_bytes(bytes(b))


def _rename(path: Path, old: str, new: str) -> None:
    """Rename a metadata key or tensor in place (names of the same length)."""
    assert len(old) == len(new)
    b = path.read_bytes()
    pat = struct.pack("<Q", len(old)) + old.encode()
    assert b.count(pat) == 1
    path.write_bytes(b.replace(pat, struct.pack("<Q", len(new)) + new.encode()))


def _another_models_shard(tmp_path: Path) -> Path:
    """Shard 3 of 3 of another model (tiny Qwen3-MoE: 27 tensors)."""
    synth("tiny-qwen3moe", tmp_path / "q3.gguf", "Q8_0")
    (tmp_path / "q3").mkdir()
    return split_gguf(tmp_path / "q3.gguf", tmp_path / "q3" / "tiny.gguf", 10)[2]


def _missing(s):
    s[1].unlink()
    return s[0], s[1], "missing shard 2 of 3"


def _missing_first(s):
    s[0].unlink()
    return s[1], s[0], "missing shard 1 of 3"


def _wrong_count(s):
    _set_key(s[1], "split.count", 4)
    return s[0], s[1], "split.count 4, but tiny-00001-of-00003.gguf says 3"


def _duplicate_no(s):
    _set_key(s[2], "split.no", 1)
    return s[0], s[2], "split.no 1 (shard 2), but its name makes it shard 3 of 3"


def _no_split_no(s):
    _rename(s[1], "split.no", "split.nX")
    return s[0], s[1], "split.count 3 but no split.no"


def _count_off(s):
    for p in s:
        _set_key(p, "split.tensors.count", 30)
    return s[0], s[0], "split.tensors.count is 30, but the 3 shards hold 29 tensors"


def _tensor_twice(s):
    _rename(s[2], "blk.1.attn_k_b.weight", "blk.0.attn_k_b.weight")
    return s[0], s[2], f"tensor 'blk.0.attn_k_b.weight' is also in {s[0]}"


def _other_model(s):
    shutil.copy(_another_models_shard(s[0].parent.parent), s[2])
    return s[0], s[2], "split.tensors.count 27, but tiny-00001-of-00003.gguf says 29"


def _extra_file_in_dir(s):
    extra = s[0].parent / "another.gguf"
    shutil.copy(s[2], extra)
    return s[0].parent, extra, "not a file of the model tiny-00001-of-00003.gguf"


def _extra_shard_in_dir(s):
    extra = s[0].parent / "tiny-00004-of-00004.gguf"
    shutil.copy(s[2], extra)
    return s[0].parent, extra, "not a file of the model"


def _two_models_in_dir(s):
    shutil.copy(s[0], s[0].parent / "other-00001-of-00003.gguf")
    return s[0].parent, s[0].parent, "2 first shards"


def _renamed_first(s):
    p = s[0].rename(s[0].parent / "model.gguf")
    return p, p, "does not end in -00001-of-00003.gguf"


def _renamed_later(s):
    p = s[1].rename(s[0].parent / "part.gguf")
    return p, p, "shard 2 of a 3-file split model"


def _empty_dir(s):
    for p in s:
        p.unlink()
    return s[0].parent, s[0].parent, "without a .gguf file"


@pytest.mark.parametrize(
    "brk",
    [
        _missing,
        _missing_first,
        _wrong_count,
        _duplicate_no,
        _no_split_no,
        _count_off,
        _tensor_twice,
        _other_model,
        _extra_file_in_dir,
        _extra_shard_in_dir,
        _two_models_in_dir,
        _renamed_first,
        _renamed_later,
        _empty_dir,
    ],
)
def test_a_broken_set_is_a_one_line_error_naming_the_file(capsys, copy, brk):
    arg, culprit, words = brk(copy)
    with pytest.raises(GGUFError) as e:
        open_gguf(arg)
    msg = str(e.value)
    assert msg.startswith(f"{culprit}: ") and words in msg and "\n" not in msg

    for cmd in (
        ["run", "-m", str(arg), "-n", "1"],
        ["quantize", str(arg), str(copy[0].parent.parent / "o.gguf")],
    ):
        rc, out, err = _run(capsys, *cmd)
        assert rc == 1 and out == ""  # as any other bad file
        assert err.strip().splitlines() == [f"numoe: error: {msg}"]


# --- doctor, bench, quantize ---------------------------------------------------------------


def test_doctor_on_a_split_model(capsys, whole, shards):
    assert main(["doctor", "-m", str(whole), "--json"]) == 0
    want = json.loads(capsys.readouterr().out)["model"]
    assert main(["doctor", "-m", str(shards[0]), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)["model"]
    assert m["files"] == [str(p) for p in shards] and want["files"] == [str(whole)]
    assert (m["expert_bytes"], m["dense_bytes"]) == (want["expert_bytes"], want["dense_bytes"])
    assert m["policies"] == want["policies"]
    assert main(["doctor", "-m", str(shards[0].parent)]) == 0
    out = capsys.readouterr().out
    assert f"model: {shards[0].parent} (deepseek2, 3 files): routed experts" in out


def test_bench_on_a_split_model(capsys, monkeypatch, tmp_path, whole, shards):
    monkeypatch.setenv("NUMOE_CACHE", str(tmp_path))  # pp only: no bandwidth probe runs
    rows = {}
    for path in (whole, shards[0].parent):
        argv = ["bench", "-m", str(path), "-p", "8", "-n", "0", "-r", "1", "-t", "1", "-o", "json"]
        assert main(argv) == 0
        (rows[path],) = json.loads(capsys.readouterr().out)
    a, b = rows[whole], rows[shards[0].parent]
    for k in ("model_size", "model_n_params", "model_n_params_active", "bytes_per_token"):
        assert a[k] == b[k] > 0, k
    assert b["model_filename"] == str(shards[0])  # the first shard, as llama-bench gets it
    # every shard's pages, resident after the load's prefault, are in the report
    assert sum(b["bytes_per_node"].values()) >= b["model_size"]


def test_quantize_a_split_model_into_one_file(capsys, tmp_path, whole, shards):
    want = tmp_path / "want.gguf"
    assert main(["quantize", str(whole), str(want), "--type", "Q8_0"]) == 0
    for src in (shards[0], shards[0].parent):
        out = tmp_path / "out.gguf"
        assert main(["quantize", str(src), str(out), "--type", "Q8_0"]) == 0
        assert out.read_bytes() == want.read_bytes()  # one file, no split.* keys
        out.unlink()
    capsys.readouterr()
    # the output must not be one of the input's files
    rc, _, err = _run(capsys, "quantize", str(shards[0]), str(shards[1]), "--type", "Q8_0")
    assert rc == 1 and f"output {shards[1]} is an input file" in err
    assert open_gguf(shards[0]).paths == shards  # left as it was
