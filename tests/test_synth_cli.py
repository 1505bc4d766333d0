"""numoe synth and the run/chat commands, end to end on tiny synthetic models."""

from __future__ import annotations

import re
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch
from cli_proc import sigint_inherited

from numoe.cli import main
from numoe.engine import Session
from numoe.gguf import open_gguf
from numoe.models import load
from numoe.synth import presets, synth

TINY = [name for name in presets() if name.startswith("tiny")]


def _standard_names(arch: str) -> list[re.Pattern]:
    """Tensor names the gguf package (llama.cpp's own table) knows for an architecture."""
    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    pats = []
    for t in gguf.MODEL_TENSORS[arch_id]:
        base = re.escape(gguf.TENSOR_NAMES[t]).replace(r"\{bid\}", r"\d+")
        base = base.replace(r"\{xid\}", r"\d+")
        pats.append(re.compile(base + r"\.(weight|bias)$"))
    return pats


@pytest.mark.parametrize("preset", TINY)
@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
def test_synth_is_standard_gguf_and_runs(tmp_path, preset, qtype):
    path = tmp_path / "m.gguf"
    cfg = synth(preset, path, qtype)
    r = gguf.GGUFReader(path)  # the reference reader
    arch = r.fields["general.architecture"].contents()
    assert arch == cfg.arch
    assert r.fields[f"{arch}.block_count"].contents() == cfg.n_layer
    pats = _standard_names(arch)
    for t in r.tensors:
        assert any(p.match(t.name) for p in pats), f"non-standard tensor name {t.name}"
    if qtype == "Q8_0":
        # every matrix whose rows split into 32-blocks, except the routers (kept F32)
        mats = [
            t
            for t in r.tensors
            if len(t.shape) >= 2 and t.shape[0] % 32 == 0 and "gate_inp" not in t.name
        ]
        assert mats
        assert all(t.tensor_type == gguf.GGMLQuantizationType.Q8_0 for t in mats)
    n_tok = len(r.fields["tokenizer.ggml.tokens"].contents())
    assert n_tok == cfg.n_vocab

    g = open_gguf(path)
    _, model = load(g)
    sess = Session(model, n_ctx=32)
    logits = sess.prefill([1, 2, 3])
    assert logits.shape == (cfg.n_vocab,) and torch.isfinite(logits).all()


def test_synth_layers_override_and_seed(tmp_path):
    a, b, c = (tmp_path / f"{x}.gguf" for x in "abc")
    synth("tiny-qwen3moe", a, "F32", layers=1, seed=3)
    synth("tiny-qwen3moe", b, "F32", layers=1, seed=3)
    synth("tiny-qwen3moe", c, "F32", layers=1, seed=4)
    ga, gb, gc = (open_gguf(p) for p in (a, b, c))
    assert ga.arch_get("block_count") == 1
    w = "blk.0.ffn_gate_exps.weight"
    assert np.array_equal(ga.tensor(w).data, gb.tensor(w).data)
    assert not np.array_equal(ga.tensor(w).data, gc.tensor(w).data)


def test_synth_bad_preset(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        synth("nope", tmp_path / "x.gguf")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "tiny.gguf"
    synth("tiny-qwen3moe", path, "Q8_0")
    return str(path)


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_run_greedy_is_deterministic_and_stdout_is_only_text(capsys, tiny):
    args = ("run", "-m", tiny, "-p", "Hello there", "-n", "12", "--temp", "0", "--ignore-eos")
    rc, out1, err = _run(capsys, *args)
    assert rc == 0
    assert "tok/s" in err and "tok/s" not in out1
    rc, out2, _ = _run(capsys, *args, "-t", "1")
    assert out1 == out2

    # stdout is exactly the decoded greedy continuation, computed independently here
    from numoe.sampling import Sampler, SamplingParams
    from numoe.text import Tokenizer

    g = open_gguf(tiny)
    tok = Tokenizer.from_gguf(g)
    _, model = load(g)
    ids, cache, want = tok.encode("Hello there", special=True), model.new_cache(64), []
    logits = model.forward(torch.tensor(ids), cache, 0)[-1]
    for i in range(12):
        t = int(logits.argmax())
        want.append(t)
        logits = model.forward(torch.tensor([t]), cache, len(ids) + i)[-1]
    assert out1 == tok.decode(want, skip_special=True) + "\n"
    assert Sampler(SamplingParams(temperature=0)).sample(logits, []) == int(logits.argmax())


def test_run_seed_fixes_sampling(capsys, tiny):
    args = ("run", "-m", tiny, "-p", "Hi", "-n", "16", "--temp", "1.5", "--ignore-eos")
    outs = [_run(capsys, *args, "--seed", s)[1] for s in ("7", "7", "8")]
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "-m", "/nonexistent.gguf"], "nonexistent.gguf"),
        (["run", "--device", "cuda:7"], "cuda"),
        (["run", "--device", "tpu"], "bad device 'tpu'"),
    ],
)
def test_run_bad_input_is_one_line_error(capsys, tiny, argv, message):
    if "-m" not in argv:
        argv = [*argv, "-m", tiny]
    rc, out, err = _run(capsys, *argv)
    assert rc == 1 and out == ""
    lines = err.strip().splitlines()
    assert lines[-1].startswith("numoe: error:") and message in lines[-1]
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "-t", "0"], "argument -t/--threads/--cpu-infer/--cpu_infer: must be >= 1"),
        (["run", "--top-p", "2"], "argument --top-p: must be in [0, 1], got 2"),
    ],
)
def test_bad_flag_value_is_rejected(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_chat_two_turns_over_stdin(tiny):
    """A real process: two user turns on stdin, two replies on stdout, then EOF quits."""
    p = subprocess.run(
        [sys.executable, "-m", "numoe", "chat", "-m", tiny, "-n", "6", "--temp", "0"],
        input="hello\nhow are you?\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("generation:") == 2


def test_chat_ctrl_c_stops_the_reply_not_the_program(tiny):
    """SIGINT during a long reply ends that reply; the next line is still answered."""
    import signal
    import time

    with sigint_inherited():  # a Ctrl-C for the child even when this runner ignores SIGINT
        p = subprocess.Popen(
            [sys.executable, "-m", "numoe", "chat", "-m", tiny, "-c", "20000", "--ignore-eos"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        p.stdin.write("tell me a long story\n")
        p.stdin.flush()
        assert p.stdout.read(1)  # the reply has started streaming
        time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        p.stdin.write("/exit\n")
        p.stdin.close()
        rc = p.wait(timeout=120)
        err = p.stderr.read()
    finally:
        p.kill()
    assert rc == 0, err
    assert "[stopped]" in err and "Traceback" not in err


def _rewrite(src: str, dst, arch=None, drop=(), reshape=None):
    """Copy a GGUF with another architecture name, tensors dropped or one tensor reshaped."""
    from numoe.gguf import dequantize
    from numoe.gguf.write import write_gguf

    g = open_gguf(src)
    meta = {k: v for k, v in g.meta.items() if not k.startswith("general.")}
    if arch:
        meta = {k.replace(f"{g.arch}.", f"{arch}.", 1): v for k, v in meta.items()}
    tensors = {n: dequantize(t).numpy() for n, t in g.tensors.items() if n not in drop}
    if reshape:
        name, shape = reshape
        tensors[name] = np.zeros(shape, np.float32)
    write_gguf(dst, arch or g.arch, meta, tensors)
    return str(dst)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"arch": "gpt9"}, "unknown architecture 'gpt9'"),
        ({"drop": ["blk.1.ffn_up_exps.weight"]}, "missing tensor 'blk.1.ffn_up_exps.weight'"),
        ({"reshape": ("blk.0.attn_q.weight", (32, 64))}, "tensor 'blk.0.attn_q.weight' has shape"),
    ],
)
def test_run_bad_model_is_one_line_error(capsys, tmp_path, tiny, change, message):
    bad = _rewrite(tiny, tmp_path / "bad.gguf", **change)
    rc, out, err = _run(capsys, "run", "-m", bad, "-n", "2")
    assert rc == 1 and out == ""
    assert message in err.strip().splitlines()[-1]
    assert "Traceback" not in err
