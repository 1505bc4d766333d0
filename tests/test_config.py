"""Settings: default < config file < NUMOE_* < flag (numoe.config), the sources numoe doctor
shows, one-line errors for a bad file or variable, and every flag's help naming its default."""

from __future__ import annotations

import argparse
import json

import pytest

from numoe import config
from numoe.cli import _parser, main
from numoe.cli.common import HELP_FMT
from numoe.runtime import pool


@pytest.fixture
def cfg_file(tmp_path, monkeypatch):
    path = tmp_path / "numoe" / "config.toml"
    monkeypatch.setenv("NUMOE_CONFIG", str(path))
    return path


def _doctor_settings(capsys, *flags) -> dict:
    assert main(["doctor", "--json", *flags]) == 0
    return json.loads(capsys.readouterr().out)["settings"]


def test_precedence_default_file_env_flag(cfg_file, monkeypatch, capsys):
    st = _doctor_settings(capsys)
    assert st["config_file"] == str(cfg_file) and not st["config_found"]
    assert {k: v["source"] for k, v in st["values"].items()} == dict.fromkeys(
        config.SETTINGS, "default"
    )
    assert st["values"]["numa"]["value"] == "auto" and st["values"]["threads"]["value"] is None

    cfg_file.parent.mkdir(parents=True)
    cfg_file.write_text('[defaults]\nthreads = 1\nnuma = "off"\nsmt = false\n')
    st = _doctor_settings(capsys)
    src = f"config {cfg_file}"
    assert st["config_found"]
    assert st["values"]["threads"] == {"value": 1, "source": src}
    assert st["values"]["numa"] == {"value": "off", "source": src}
    assert st["values"]["numa_nodes"]["source"] == "default"

    monkeypatch.setenv("NUMOE_THREADS", "2")
    monkeypatch.setenv("NUMOE_SMT", "no")
    st = _doctor_settings(capsys)
    assert st["values"]["threads"] == {"value": 2, "source": "env NUMOE_THREADS"}
    assert st["values"]["smt"] == {"value": False, "source": "env NUMOE_SMT"}
    assert st["values"]["numa"]["source"] == src

    assert main(["doctor", "--json", "-t", "1", "--numa", "auto"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["settings"]["values"]["threads"] == {"value": 1, "source": "flag -t"}
    assert r["settings"]["values"]["numa"] == {"value": "auto", "source": "flag --numa"}
    assert r["thread_plan"]["requested"] == 1  # the plan follows the winning value

    assert main(["doctor"]) == 0  # text: each setting with its source
    out = capsys.readouterr().out
    assert f"config file:    {cfg_file}" in out
    assert "threads       2              env NUMOE_THREADS" in out


def test_mistyped_flag_is_an_error_whatever_the_file(cfg_file, capsys):
    cfg_file.parent.mkdir(parents=True)
    cfg_file.write_text("[defaults]\nthreads = 1\n")
    with pytest.raises(SystemExit) as e:
        main(["doctor", "-t", "two"])
    assert e.value.code == 2 and "argument -t" in capsys.readouterr().err


def test_run_reads_the_config_file(cfg_file, capsys, tiny_model):
    cfg_file.parent.mkdir(parents=True)
    cfg_file.write_text("[defaults]\nthreads = 1\n")
    try:
        assert main(["run", "-m", tiny_model, "-p", "hi", "-n", "1", "--temp", "0"]) == 0
        assert pool.num_threads() == 1
    finally:
        pool.set_threads(None)
    err = capsys.readouterr().err
    assert "with 1 thread," in err


@pytest.mark.parametrize(
    "text, words",
    [
        ("[defaults]\nthread = 2\n", ["unknown key 'thread' in [defaults]", "threads"]),
        ('[defaults]\nnuma = "interleave"\n', ['numa = "interleave"', "one of auto"]),
        ("[defaults]\nthreads = 0\n", ["threads = 0", ">= 1"]),
        ('[defaults]\nnuma_nodes = "x"\n', ["numa_nodes", "node list"]),
        ("[defaults]\nsmt = 3\n", ["smt = 3", "true or false"]),
        ("threads = 2\n", ["key 'threads' outside [defaults]"]),
        ("[machine]\nthreads = 2\n", ["unknown table [machine]"]),
        ("[defaults\n", ["not valid TOML"]),
    ],
)
def test_bad_config_file_is_one_line(cfg_file, capsys, text, words):
    cfg_file.parent.mkdir(parents=True)
    cfg_file.write_text(text)
    assert main(["run", "-m", "missing.gguf"]) == 1  # stops before the model
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1
    assert lines[0].startswith(f"numoe: error: config {cfg_file}: ")
    assert all(w in lines[0] for w in words), lines[0]
    assert "fix" in lines[0] or "move or remove" in lines[0]
    # numoe doctor goes on, with the problem as its first finding
    assert main(["doctor", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)["advice"][0]
    assert first["code"] == "config_error" and first["text"] == lines[0].split("error: ", 1)[1]


@pytest.mark.parametrize(
    "var, value", [("NUMOE_THREADS", "many"), ("NUMOE_NUMA", "x"), ("NUMOE_SMT", "maybe")]
)
def test_bad_variable_is_one_line(monkeypatch, capsys, var, value):
    monkeypatch.setenv(var, value)
    assert main(["run", "-m", "missing.gguf"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"numoe: error: {var}={value!r}: expected ")
    assert err.endswith("fix or unset it") and "\n" not in err
    assert main(["doctor", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)["advice"][0]
    assert first["code"] == "config_error" and first["text"].startswith(f"{var}={value!r}")


def test_write_config_keeps_other_keys(cfg_file):
    cfg_file.parent.mkdir(parents=True)
    cfg_file.write_text('[defaults]\nnuma_nodes = "0"\nthreads = 8\n')
    path = config.write_config({"threads": 3, "numa": "off"}, "tuned\nsecond line")
    assert path == cfg_file
    text = cfg_file.read_text()
    assert text.startswith("# tuned\n# second line\n")
    assert config.read_config() == {"threads": 3, "numa": "off", "numa_nodes": "0"}
    with pytest.raises(ValueError):
        config.write_config({"threads": 0})
    assert config.read_config()["threads"] == 3


def test_paths_follow_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("NUMOE_CONFIG")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "c"))
    assert config.config_path() == tmp_path / "c" / "numoe" / "config.toml"
    monkeypatch.delenv("NUMOE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "k"))
    assert config.cache_dir() == tmp_path / "k" / "numoe"
    monkeypatch.setenv("NUMOE_CACHE", str(tmp_path / "n"))
    assert config.cache_dir() == tmp_path / "n"


def test_resolve_keeps_flags_and_fills_the_rest(cfg_file):
    args = argparse.Namespace(threads=3)
    got = config.resolve(args, ("threads", "numa"))
    assert (args.threads, args.numa) == (3, "auto")
    assert got["threads"].source == "flag -t" and got["numa"].source == "default"


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    act = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(act.choices)


def test_every_flag_help_names_its_default():
    subs = _subparsers(_parser())
    assert {"run", "chat", "bench", "tune", "doctor", "synth", "quantize"} <= set(subs)
    for name, sp in subs.items():
        fmt = HELP_FMT(prog=name)
        for a in sp._actions:
            if not a.option_strings or isinstance(a, argparse._HelpAction):
                continue
            text = fmt._get_help_string(a) or ""
            assert "default" in text or "(required)" in text, (name, a.option_strings, text)
        sp.format_help()  # every help string formats (no stray %)
