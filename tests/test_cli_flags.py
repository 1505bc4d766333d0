"""Issue 15, items 1, 2 and 5: the flags llama.cpp and KTransformers users type, llama.cpp's
number conventions, the context against the model and the memory, and messages that say
what numoe did. Each through the console script, as a user runs it."""

from __future__ import annotations

import json
import re

import pytest
from cli_proc import numoe, one_line_error, qwen_tiny  # noqa: F401

# --- 1. flags people already type --------------------------------------------------------


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["run", "-n", "-5"], "-n/--n-predict"),
        (["run", "--top-k", "-1"], "--top-k"),
        (["run", "-c", "-1"], "-c/--ctx-size"),
        (["run", "--top-p", "1.5"], "--top-p"),
        (["chat", "--temp", "-0.1"], "--temp"),
        (["serve", "--top-k", "-2"], "--top-k"),
        (["bench", "-n", "-1"], "-n/--n-gen"),
        (["run", "-ngl", "lots"], "-ngl"),
    ],
)
def test_out_of_range_is_an_error_naming_the_flag(argv, flag):
    p = numoe(*argv)
    line = one_line_error(p, flag, rc=2)
    assert "argument" in line


def test_ktransformers_spellings_and_the_prompt_from_a_file_or_stdin(qwen_tiny, tmp_path):  # noqa: F811
    """--gguf_path, --cpu_infer, --max_new_tokens, --model_path (said in one line),
    --prompt_file; the prompt from a file and from standard input with one trailing newline
    dropped, the same as -p."""
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Hello world\n", encoding="utf-8")
    common = ["--temp", "0", "-c", "64"]
    a = numoe(
        "run", "--gguf_path", qwen_tiny, "--cpu_infer", "1", "--max_new_tokens", "4",
        "--model_path", str(tmp_path), "--prompt_file", prompt, *common,
    )  # fmt: skip
    assert a.returncode == 0, a.stderr
    err = a.stderr
    assert "--model_path" in err and "reads" in err and "GGUF" in err
    assert "generation: 4 tokens" in err
    load = next(ln for ln in err.splitlines() if ln.startswith("numoe: loaded"))
    assert "with 1 thread," in load and "NUMA " in load  # 1 thread, and the policy used
    b = numoe("run", "-m", qwen_tiny, "-t", "1", "-n", "4", "-p", "-", *common,
              input="Hello world\n")  # fmt: skip
    c = numoe("run", "-m", qwen_tiny, "-t", "1", "-n", "4", "-p", "Hello world", *common)
    assert b.returncode == 0 and c.returncode == 0, (b.stderr, c.stderr)
    prompt_of = [re.search(r"prompt: (\d+) tokens", p.stderr).group(1) for p in (a, b, c)]
    assert prompt_of[0] == prompt_of[1] == prompt_of[2]
    assert a.stdout == b.stdout == c.stdout


def test_n_minus_one_full_context_c0_trained_context_and_gpu_flags(qwen_tiny):  # noqa: F811
    p = numoe("run", "-m", qwen_tiny, "-c", "12", "-n", "-1", "--ignore-eos", "-p", "Hi")
    assert p.returncode == 0, p.stderr
    m = re.search(r"prompt: (\d+) tokens.*generation: (\d+) tokens", p.stderr)
    # until the context is full: 12 positions, and the last token, never fed back, needs none
    assert int(m.group(1)) + int(m.group(2)) == 13
    # -c 0: the GGUF's qwen3moe.context_length; -t above the CPUs here says why it runs fewer
    # and llama.cpp's GPU flags in numoe's terms: dense layers on cuda where there is one
    p = numoe("run", "-m", qwen_tiny, "-c", "0", "-n", "2", "-t", "4096", "-ngl", "99",
              "--cpu-moe", "--n-cpu-moe", "3")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert re.search(r"-ngl 99: (no CUDA GPU here|attention, dense layers)", p.stderr)
    assert "--cpu-moe: numoe always runs the routed experts on the CPU" in p.stderr
    assert "-c 0: the model's trained context, 4096 tokens" in p.stderr
    assert re.search(r"-t 4096: this process may run \d+ threads? .*: using \d+", p.stderr)


# --- 2. context and memory ----------------------------------------------------------------


def test_context_past_training_warns_and_one_that_cannot_fit_is_one_line(qwen_tiny):  # noqa: F811
    p = numoe("run", "-m", qwen_tiny, "-c", "5000", "-n", "1")
    assert p.returncode == 0, p.stderr
    assert re.search(r"warning: -c 5000 is past the model's trained context \(4096", p.stderr)
    # far beyond any machine's memory: one line with the size it needs, before the load
    p = numoe("run", "-m", qwen_tiny, "-c", str(10**13), "-n", "1")
    line = one_line_error(p, f"-c {10**13}", "needs", "KV cache", "per token", rc=2)
    assert "numoe: loaded" not in p.stderr and "give -c" in line
    # the case: a one-line error or a run, never a traceback
    p = numoe("run", "-m", qwen_tiny, "-c", "100000000", "-n", "1")
    assert "Traceback" not in p.stderr
    if p.returncode != 0:
        one_line_error(p, "needs", rc=2)


# --- 5. clear about what it did -----------------------------------------------------------


def test_bad_config_value_names_the_file_and_key_not_a_flag(qwen_tiny, tmp_path):  # noqa: F811
    cfg = tmp_path / "config.toml"
    cfg.write_text('[defaults]\nnuma_nodes = "77"\n', encoding="utf-8")
    p = numoe("run", "-m", qwen_tiny, "-n", "1", NUMOE_CONFIG=str(cfg))
    line = one_line_error(p, str(cfg), "numa_nodes", "77")
    assert "--numa-nodes" not in line


def test_doctor_reports_a_broken_config_first(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text("[defaults]\nthreads = 0\n", encoding="utf-8")
    p = numoe("doctor", NUMOE_CONFIG=str(cfg))
    assert p.returncode == 0, p.stderr
    advice = p.stdout.split("\nadvice:", 1)[1].strip().splitlines()
    assert advice[0].startswith("! [config_error] config")  # the first finding
    assert "not used, see advice" in p.stdout
    p = numoe("doctor", "--json", NUMOE_CONFIG=str(cfg))
    assert p.returncode == 0, p.stderr
    first = json.loads(p.stdout)["advice"][0]
    assert first["code"] == "config_error"
    assert str(cfg) in first["text"] and "threads = 0" in first["text"]


def test_doctor_on_one_shard_of_a_split_model_says_so(qwen_tiny, tmp_path):  # noqa: F811
    from test_gguf_split import split_gguf

    shards = split_gguf(qwen_tiny, tmp_path / "split.gguf", 8)
    assert len(shards) > 2
    p = numoe("doctor", "-m", shards[1])
    assert p.returncode == 0, p.stderr
    assert f"-m names shard 2 of {len(shards)} of a split model" in p.stdout
    assert shards[0].name in p.stdout


def test_bench_rejects_a_missing_device_before_the_bandwidth_probe(qwen_tiny):  # noqa: F811
    # cuda:99 exists nowhere; on a machine without CUDA every cuda device is refused alike
    p = numoe("bench", "-m", qwen_tiny, "--device", "cuda:99", "-p", "0", "-n", "1")
    one_line_error(p, "cuda:99", rc=1)
    assert "read bandwidth" not in p.stderr and "loaded" not in p.stderr
