"""numoe synth (progress, a real vocabulary prints text, Ctrl-C, a missing directory), numoe
tune (the config file edited in place, the toy model, the noise) and start-up without torch."""

from __future__ import annotations

import dataclasses
import io
import os
import signal
import subprocess
import sys
import time

import pytest
from cli_proc import sigint_inherited
from test_cli_chat import numoe_cmd

from numoe import config
from numoe.cli import main
from numoe.config import tomllib
from numoe.progress import WriteProgress


def numoe(*argv: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*numoe_cmd(), *argv], capture_output=True, text=True, timeout=timeout, check=False, **kw
    )


# ---------------------------------------------------------------------------- synth


def test_synth_progress_lines_when_not_a_terminal(tmp_path):
    out = tmp_path / "m.gguf"
    p = numoe("synth", "--preset", "small-qwen3moe", "--layers", "4", "--type", "F32", "-o", out)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    prog = [ln for ln in lines if ln.startswith("numoe: writing m.gguf ")]
    assert 3 <= len(prog) <= 9, p.stderr  # about one per 10 %, no bar, no carriage return
    pcts = [int(ln.split("%")[0].split()[-1]) for ln in prog]
    assert pcts == sorted(pcts) and pcts[0] >= 10 and pcts[-1] < 100
    assert all("tensors" in ln and "\r" not in ln for ln in prog)
    assert lines[-1].startswith(f"numoe: wrote {out} (") and "small-qwen3moe" in lines[-1]


def test_write_progress_bar_on_a_terminal():
    s = io.StringIO()
    prog = WriteProgress("x.gguf", stream=s, tty=True)
    for i in range(1, 5):
        prog(i, 4, i * 100, 400)
    prog.clear()
    text = s.getvalue()
    assert text.startswith("\rnumoe: writing x.gguf [") and "4/4 tensors" in text
    assert "#" * 24 in text and "\n" not in text and text.endswith("\r")


def test_synth_missing_output_directory_is_named(tmp_path):
    missing = tmp_path / "no" / "such"
    p = numoe("synth", "-o", str(missing / "m.gguf"))
    assert p.returncode == 1
    assert p.stderr.strip() == (
        f"numoe: error: output directory {missing} does not exist (create it first)"
    )
    assert not (tmp_path / "no").exists()


def test_interrupted_synth_leaves_no_file(tmp_path):
    out = tmp_path / "big.gguf"
    with sigint_inherited():  # a Ctrl-C for the child even when this runner ignores SIGINT
        proc = subprocess.Popen(
            [*numoe_cmd(), "synth", "--preset", "small-qwen3moe", "--layers", "64", "--type",
             "F32", "-o", str(out)],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    try:
        line = proc.stderr.readline()
        while line and not line.startswith("numoe: writing"):
            line = proc.stderr.readline()
        assert line, "no progress line"
        assert any(f.name.endswith(".tmp") for f in tmp_path.iterdir())  # it is writing
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 130, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_real_vocabulary_size_prints_text(tmp_path, monkeypatch):
    """A tiny model with Qwen3's 151,936-token vocabulary: `numoe run` prints words."""
    from numoe import synth as synth_mod
    from numoe.text import Tokenizer, synth_vocab_metadata
    from numoe.text.tokenizer import TT_CONTROL

    for kind, n in (("gpt2", 151936), ("llama", 32000)):
        meta = synth_vocab_metadata(n, kind)
        types = meta["tokenizer.ggml.token_type"]
        assert len(types) == n and sum(t == TT_CONTROL for t in types) <= 16
        tok = Tokenizer.from_metadata(meta)
        assert len(tok.decode(range(n - 50, n), skip_special=True).split()) == 50

    table = synth_mod.presets()
    arch, cfg = table["tiny-qwen3moe"]
    table["tiny-qwen3moe-big-vocab"] = (arch, dataclasses.replace(cfg, n_vocab=151936))
    monkeypatch.setattr(synth_mod, "presets", lambda: table)
    path = tmp_path / "v.gguf"
    synth_mod.synth("tiny-qwen3moe-big-vocab", path, "Q8_0")
    p = numoe("run", "-m", str(path), "-t", "1", "-p", "Hello", "-n", "16", "--seed", "1",
              "--ignore-eos")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.split()) >= 8, repr(p.stdout)


# ----------------------------------------------------------------------------- tune


USER_FILE = """\
# my settings, by hand
# (keep this)

[defaults]   # the only table
threads = 8          # as many as the big box has
numa = "off"  # no NUMA here

# serve
port = 9000
"""


def test_write_config_keeps_comments_and_other_keys(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(USER_FILE)
    config.write_config({"threads": 4, "smt": True}, "numoe tune, today: best\nm.gguf: 9 t/s",
                        path)  # fmt: skip
    text = path.read_text()
    assert text.startswith("# my settings, by hand\n# (keep this)\n\n")
    assert "threads = 4          # as many as the big box has\n" in text
    assert 'numa = "off"  # no NUMA here\n' in text and "# serve\nport = 9000\nsmt = true\n" in text
    assert "# numoe tune, today: best\n# m.gguf: 9 t/s\n[defaults]   # the only table\n" in text
    assert tomllib.loads(text) == {
        "defaults": {"threads": 4, "numa": "off", "port": 9000, "smt": True}
    }
    # a second tune replaces its own comment and values, nothing else
    config.write_config({"threads": 2}, "numoe tune, tomorrow: best\nm.gguf: 10 t/s", path)
    text2 = path.read_text()
    assert text2 == text.replace("threads = 4 ", "threads = 2 ").replace(
        "# numoe tune, today: best\n# m.gguf: 9 t/s\n",
        "# numoe tune, tomorrow: best\n# m.gguf: 10 t/s\n",
    )


def test_write_config_new_file_and_no_table(tmp_path):
    path = tmp_path / "sub" / "config.toml"
    config.write_config({"threads": 3}, "numoe tune, now", path)
    assert tomllib.loads(path.read_text()) == {"defaults": {"threads": 3}}
    path.write_text("# only a comment\n")
    config.write_config({"numa": "shard"}, "", path)
    assert path.read_text() == '# only a comment\n\n[defaults]\nnuma = "shard"\n'


def test_tune_keeps_the_default_within_the_noise():
    from numoe.cli.tune import choose

    def row(t, ts, sd):
        return {"n_threads": t, "numa": "off", "avg_ts": ts, "stddev_ts": sd}

    d = row(8, 10.0, 0.5)
    rows = [row(1, 10.4, 0.2), d, row(4, 9.0, 0.1)]
    best, note = choose(rows, d)
    assert best is d and note.startswith("kept the default: -t 1 was 0.40 t/s faster")
    best, note = choose([row(1, 10.6, 0.2), d], d)  # beats the noise
    assert best["n_threads"] == 1 and note is None
    d1 = row(8, 10.0, 0.0)  # -r 1: no deviation, the floor (3 %) decides
    assert choose([row(1, 10.2, 0.0), d1], d1)[0] is d1
    assert choose([row(1, 10.4, 0.0), d1], d1)[0]["n_threads"] == 1
    assert choose([row(1, 10.4, 0.0)], None)[0]["n_threads"] == 1  # no default in the sweep


def test_tune_does_not_save_the_toy_model_unless_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NUMOE_CACHE", str(tmp_path / "cache"))
    cfg = tmp_path / "config.toml"
    monkeypatch.setenv("NUMOE_CONFIG", str(cfg))
    argv = ["tune", "-p", "0", "-n", "2", "-r", "1", "-t", "1", "--probe-once"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "not written: measured on the built-in random-weight model" in out
    assert not cfg.exists()
    assert main([*argv, "--save-anyway"]) == 0
    assert f"wrote {cfg}: threads = 1" in capsys.readouterr().out
    assert config.read_config(cfg)["threads"] == 1


# ----------------------------------------------------------------------------- start-up


def test_help_and_doctor_do_not_import_torch(tmp_path):
    code = """if True:
        import sys
        import numoe.cli
        p = numoe.cli._parser()
        for cmd in ([], ["run"], ["chat"], ["serve"], ["bench"], ["tune"], ["synth"],
                    ["quantize"], ["doctor"]):
            try:
                p.parse_args([*cmd, "--help"])
            except SystemExit:
                pass
        print("help", sorted(m for m in ("torch", "numoe.gguf.read", "numoe.models")
                             if m in sys.modules), file=sys.stderr)
        rc = numoe.cli.main(["doctor"])
        print("doctor", rc, "torch" in sys.modules, file=sys.stderr)
    """
    env = {**os.environ, "NUMOE_CONFIG": str(tmp_path / "none.toml")}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120, check=False)  # fmt: skip
    assert "help []\n" in p.stderr, p.stderr
    assert "doctor 0 False\n" in p.stderr, p.stderr


def test_help_lists_agree_with_the_modules():
    """The torch-free copies the parsers use."""
    from numoe.cli import quantize as cli_quantize
    from numoe.cli import synth as cli_synth
    from numoe.gguf.mix import FTYPES
    from numoe.gguf.write import WRITE_TYPES
    from numoe.synth import DEFAULT_PRESET, presets

    assert cli_synth.PRESETS == tuple(presets())
    assert cli_synth.DEFAULT_PRESET == DEFAULT_PRESET
    assert cli_synth.WRITE_TYPES == tuple(WRITE_TYPES)
    assert cli_quantize.FTYPES == tuple(FTYPES)


@pytest.mark.parametrize("argv", [["--help"], ["synth", "--help"], ["doctor"]])
def test_console_script_answers(argv, tmp_path):
    t0 = time.perf_counter()
    p = numoe(*argv, env={**os.environ, "NUMOE_CONFIG": str(tmp_path / "none.toml")})
    assert p.returncode == 0, p.stderr
    assert p.stdout  # (no timing assert: this machine may be busy)
    print(f"numoe {' '.join(argv)}: {time.perf_counter() - t0:.2f} s")
