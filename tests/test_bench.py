"""numoe bench / tune on a tiny synthetic model: the documented columns, consistent values
(GB/s = bytes per token x t/s, % of the probe), json and csv that parse, bytes per token
against a hand count and its split, the read-bandwidth probe beside each tg test (or one
cached figure and its age), the '!' on a % over 100, the ISA, the probe cache, tune writing
the config file the others read, and the load and reply feedback."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics

import pytest

from numoe import _cpu, bench, roofline
from numoe.cli import main
from numoe.gguf import open_gguf
from numoe.models import load
from numoe.progress import LoadProgress
from numoe.runtime import bandwidth, pool
from numoe.synth import preset_config, synth

PROBE_GBPS = 8.0  # the read bandwidth the tests' probe cache holds and their probe measures

MD_HEADER = [
    "model", "size", "params", "quant", "threads", "numa", "test", "t/s", "GB/s", "exp GB/s",
    "% bw", "peak RSS", "per node",
]  # fmt: skip
LLAMA_BENCH = {
    "model_filename", "model_size", "model_n_params", "n_threads", "n_prompt", "n_gen",
    "n_depth", "avg_ts", "stddev_ts", "samples_ts",
}  # fmt: skip
NUMOE_OWN = {
    "bytes_per_token", "gbps", "bw_pct", "peak_rss_bytes", "numa", "bytes_per_node", "n_layer",
    "bytes_per_token_routed", "bytes_per_token_other", "bytes_per_token_head", "routed_gbps",
    "read_bw_how", "read_bw_samples", "read_bw_age_s", "bw_over_100", "isa",
}  # fmt: skip


@pytest.fixture(autouse=True)
def probes(tmp_path, monkeypatch):
    """A cached probe of PROBE_GBPS for this machine, and a fake measurement (no 1 s probe in
    the tests) returning PROBE_GBPS; the list it yields gets one entry per measurement. A test
    may set probes.values to a list of figures to return in turn. The config file:
    tmp_path/config.toml."""
    from numoe.runtime.numa import plan_threads
    from numoe.runtime.topology import Topology

    monkeypatch.setenv("NUMOE_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("NUMOE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    key = bandwidth.machine_key(plan_threads(Topology.read()).threads)
    entry = {"gbps": PROBE_GBPS, "bytes": 1 << 20, "measured": "then"}
    (tmp_path / "cache" / bandwidth.PROBE_FILE).write_text(json.dumps({key: entry}))

    calls = Calls()

    def fake(nbytes=None):
        calls.append(nbytes)
        return calls.values.pop(0) if calls.values else PROBE_GBPS

    monkeypatch.setattr(bandwidth, "measure_read_bandwidth", fake)
    yield calls
    pool.set_threads(None)


class Calls(list):
    values: list[float]

    def __init__(self):
        super().__init__()
        self.values = []


def _json_rows(capsys, *flags) -> list[dict]:
    assert main(["bench", *flags, "-o", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_md_table_has_the_documented_columns(tiny_model, capsys):
    assert main(["bench", "-m", tiny_model, "-p", "8", "-n", "4", "-r", "2", "-t", "1"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines if ln.startswith("|")]
    assert cells[0] == MD_HEADER
    assert set("".join(cells[1])) <= set("-:")  # the rule
    rows = [dict(zip(MD_HEADER, c, strict=True)) for c in cells[2:]]
    assert [r["test"] for r in rows] == ["pp8", "tg4"]
    for r in rows:
        assert r["model"] == "tiny-v2-q4_k_m.gguf" and r["quant"] == "Q4_K_M"
        assert r["threads"] == "1" and r["numa"] == "off"
        mean, sd = (float(x) for x in r["t/s"].split(" ± "))
        assert mean > 0 and sd >= 0
        assert " / " in r["params"] and r["per node"].startswith("N")
    tg = rows[1]
    gbps = float(tg["GB/s"])
    # printed with 2 and 1 decimals: allow for both roundings
    assert float(tg["% bw"]) == pytest.approx(100 * gbps / PROBE_GBPS, abs=0.05 + 0.5 / PROBE_GBPS)
    assert rows[0]["GB/s"] == "-" and rows[0]["% bw"] == "-"
    exp = float(tg["exp GB/s"])
    assert 0 < exp < gbps
    assert "read bandwidth: probed just before and just after each tg test" in out
    assert "!" not in tg["% bw"] and "over 100 %" not in out
    assert "tiny-v2-q4_k_m.gguf: deepseek2 " in out and ", 2 layers, " in out
    assert "routed experts " in out and " + output head " in out
    assert f"ISA {_cpu.isa()} " in out and "CPU flags: " in out


def test_md_columns_line_up_with_a_long_file_name(tiny_model, capsys, tmp_path):
    long = tmp_path / ("a-model-file-name-longer-than-the-column" + ".gguf")
    long.symlink_to(tiny_model)
    assert main(["bench", "-m", str(long), "-p", "8", "-n", "4", "-r", "1", "-t", "1"]) == 0
    table = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("|")]
    assert len(table) == 4 and long.name in table[2]
    bars = {tuple(i for i, ch in enumerate(ln) if ch == "|") for ln in table}
    assert len(bars) == 1  # every line has its column bars at the same places


def test_json_rows_are_consistent(tiny_model, capsys):
    rows = _json_rows(capsys, "-m", tiny_model, "-p", "8,16", "-n", "4", "-r", "2", "-t", "1,2")
    assert [r["test"] for r in rows] == ["pp8", "pp16", "tg4"] * 2  # threads outer, as -t
    assert [r["n_threads"] for r in rows[:3]] == [1] * 3
    assert all(1 <= r["n_threads"] <= 2 for r in rows[3:])  # 2, or 1 on a one-core machine
    g = open_gguf(tiny_model)
    cfg = preset_config("tiny-v2")
    for r in rows:
        assert LLAMA_BENCH | NUMOE_OWN <= set(r) and list(r) == list(bench.FIELDS)
        n = r["n_prompt"] or r["n_gen"]
        assert len(r["samples_ts"]) == len(r["samples_ns"]) == 2
        assert all(t > 0 for t in r["samples_ts"])
        assert r["samples_ts"] == pytest.approx([n * 1e9 / ns for ns in r["samples_ns"]], 1e-5)
        assert r["avg_ts"] == pytest.approx(statistics.fmean(r["samples_ts"]))
        assert r["stddev_ts"] == pytest.approx(statistics.stdev(r["samples_ts"]))
        assert r["model_size"] == sum(t.nbytes for t in g.tensors.values())
        assert r["bytes_per_token"] == roofline.bytes_per_token(g, cfg.n_expert_used, cfg.n_expert)
        assert 0 < r["model_n_params_active"] < r["model_n_params"]
        assert r["peak_rss_bytes"] > r["model_size"]
        assert r["numa"] == "off"
        assert r["n_layer"] == cfg.n_layer and r["isa"] == _cpu.isa()
        split = roofline.token_bytes(g, cfg.n_expert_used, cfg.n_expert)
        assert (r["bytes_per_token_routed"], r["bytes_per_token_other"]) == (
            split.routed, split.other
        )  # fmt: skip
        assert r["bytes_per_token_head"] == split.head > 0
        assert split.routed + split.other + split.head == r["bytes_per_token"]
        per_node = r["bytes_per_node"]
        assert per_node and all(
            v > 0 and (k.isdigit() or k == "unknown node") for k, v in per_node.items()
        )
        if r["n_gen"]:
            assert r["gbps"] == pytest.approx(r["bytes_per_token"] * r["avg_ts"] / 1e9)
            assert r["routed_gbps"] == pytest.approx(split.routed * r["avg_ts"] / 1e9)
            assert r["read_bw_gbps"] == PROBE_GBPS and r["read_bw_how"] == "beside"
            assert r["read_bw_samples"] == [PROBE_GBPS, PROBE_GBPS]
            assert r["bw_pct"] == pytest.approx(100 * r["gbps"] / PROBE_GBPS)
            assert r["bw_over_100"] is False and r["read_bw_age_s"] == 0.0
        else:
            assert r["gbps"] is None and r["bw_pct"] is None and r["routed_gbps"] is None
            assert r["read_bw_gbps"] is None and r["read_bw_samples"] == []
            assert r["bw_over_100"] is None and r["read_bw_how"] is None


def test_depth(tiny_model, capsys, monkeypatch):
    """-d: each test runs on a cache already holding n_depth tokens, prefilled before the
    clock, as llama-bench's 'tg4 @ d8'; the timed part computes only the test's tokens."""
    from numoe.models import base

    calls = []  # (tokens, position) of every forward
    real = base.DecoderModel.forward

    def spy(self, tokens, cache, pos, n_logits=None, **kw):
        calls.append((int(tokens.shape[0]), pos))
        return real(self, tokens, cache, pos, n_logits, **kw)

    monkeypatch.setattr(base.DecoderModel, "forward", spy)
    rows = _json_rows(capsys, "-m", tiny_model, "-p", "4", "-n", "3", "-d", "0,8", "-r", "1")
    assert [(r["test"], r["n_depth"]) for r in rows] == [
        ("pp4", 0), ("tg3", 0), ("pp4 @ d8", 8), ("tg3 @ d8", 8)
    ]  # fmt: skip
    pp, tg = [(4, 0)], [(1, 0), (1, 1), (1, 2)]
    pp_d, tg_d = [(8, 0), (4, 8)], [(8, 0), (1, 8), (1, 9), (1, 10)]
    assert calls == 2 * pp + 2 * tg + 2 * pp_d + 2 * tg_d  # warm-up and one repetition each
    with pytest.raises(SystemExit):
        main(["bench", "-m", tiny_model, "-d", "-1"])


def test_csv_parses(tiny_model, capsys):
    assert main(["bench", "-m", tiny_model, "-p", "8", "-n", "4", "-r", "1", "-o", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 2
    for r in rows:
        assert list(r) == list(bench.FIELDS)
        ts = float(r["avg_ts"])
        assert ts > 0 and [float(x) for x in r["samples_ts"].split(",")] == [pytest.approx(ts)]
        assert json.loads(r["bytes_per_node"])
    tg = rows[1]
    gbps = float(tg["gbps"])
    assert gbps == pytest.approx(int(tg["bytes_per_token"]) * float(tg["avg_ts"]) / 1e9)
    assert float(tg["bw_pct"]) == pytest.approx(100 * gbps / PROBE_GBPS)
    assert rows[0]["gbps"] == ""


def test_bytes_per_token_hand_count_deepseek2_q8_0(tmp_path):
    """tiny-v2 (MLA without q-LoRA, one dense layer, shared experts) at Q8_0: every matrix
    whose rows split into 32-blocks stores 34 bytes per 32 weights; routers, norms and
    attn_k_b (rows of 16) stay F32."""
    path = tmp_path / "v2.gguf"
    synth("tiny-v2", path, "Q8_0")
    c = preset_config("tiny-v2")
    D, V, H, R = c.n_embd, c.n_vocab, c.n_head, c.kv_lora_rank
    dn, dr, dv = c.d_nope, c.d_rope, c.d_v
    E, k, F, Fs = c.n_expert, c.n_expert_used, c.n_ff_exp, c.n_ff_exp * c.n_expert_shared
    n_moe = c.n_layer - c.n_layer_dense

    def q8(n):  # elements -> Q8_0 bytes
        return n // 32 * 34

    def f32(n):
        return 4 * n

    attn = (
        f32(D) + f32(D)  # attn_norm, ffn_norm
        + q8((R + dr) * D) + f32(R)  # attn_kv_a_mqa, attn_kv_a_norm
        + q8(H * (dn + dr) * D)  # attn_q
        + f32(H * R * dn) + q8(H * dv * R)  # attn_k_b (F32: rows of 16), attn_v_b
        + q8(D * H * dv)  # attn_output
    )  # fmt: skip
    dense_ffn = q8(3 * c.n_ff * D)  # gate, up, down of the leading dense layer
    # KTransformers' count: layers x hidden x moe_intermediate x k x (gate + up + down)
    routed = n_moe * D * F * k * 3 * 34 // 32
    shared = n_moe * q8(3 * Fs * D)
    router = n_moe * f32(E * D)
    head = q8(V * D) + f32(D)  # output, output_norm
    embd_row = q8(D)  # the lookup reads one row of token_embd
    want = c.n_layer * attn + c.n_layer_dense * dense_ffn + routed + shared + router
    want += head + embd_row
    assert roofline.bytes_per_token(open_gguf(path), k, E) == want

    total, active = roofline.n_params(open_gguf(path), k, E)
    routed_params = n_moe * 3 * E * F * D
    assert active == total - routed_params * (E - k) // E


def test_the_probe_runs_beside_each_tg_test(tiny_model, capsys, probes):
    """Default: one probe just before and one just after each tg test (a probe with no test
    since is reused as the next one's before), each tg row against the larger of its two."""
    probes.values = [10.0, 20.0, 30.0, 5.0]
    rows = _json_rows(capsys, "-m", tiny_model, "-p", "8", "-n", "4,6", "-r", "1", "-t", "1")
    assert [r["test"] for r in rows] == ["pp8", "tg4", "tg6"]
    assert len(probes) == 3  # before tg4, after tg4 = before tg6, after tg6
    tg4, tg6 = rows[1], rows[2]
    assert tg4["read_bw_samples"] == [10.0, 20.0] and tg4["read_bw_gbps"] == 20.0
    assert tg6["read_bw_samples"] == [20.0, 30.0] and tg6["read_bw_gbps"] == 30.0
    for r in (tg4, tg6):
        assert r["bw_pct"] == pytest.approx(100 * r["gbps"] / r["read_bw_gbps"])
    assert rows[0]["read_bw_samples"] == []


def test_probe_once_uses_the_cached_figure_and_states_its_age(tiny_model, capsys, probes):
    argv = ["bench", "-m", tiny_model, "-p", "0", "-n", "4", "-r", "1", "-t", "1"]
    assert main([*argv, "--probe-once"]) == 0
    out = capsys.readouterr().out
    assert probes == []  # the cached figure, no measurement
    assert f"read bandwidth: {PROBE_GBPS:.2f} GB/s" in out and "cached then" in out
    assert main([*argv, "--probe-once", "-o", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["read_bw_how"] == "cached" and row["read_bw_samples"] == [PROBE_GBPS]
    assert row["read_bw_age_s"] is None  # 'then' is no time
    assert main([*argv, "--probe-once", "--probe", "-o", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert len(probes) == 1 and row["read_bw_how"] == "measured"
    assert 0 <= row["read_bw_age_s"] < 600
    assert main([*argv, "--probe-once"]) == 0  # the figure just measured is cached now
    out = capsys.readouterr().out
    assert len(probes) == 1 and " old at the last tg test" in out


def test_a_figure_over_100_percent_is_flagged(tiny_model, capsys, probes):
    probes.values = [1e-6, 1e-6]  # a probe far below what the decode reads
    assert main(["bench", "-m", tiny_model, "-p", "0", "-n", "4", "-r", "1", "-t", "1"]) == 0
    out = capsys.readouterr().out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("| tiny")]
    pct = [c.strip() for c in line.strip("|").split("|")][MD_HEADER.index("% bw")]
    assert pct.endswith("!") and float(pct[:-1]) > 100
    notes = [ln for ln in out.splitlines() if ln.startswith("! ")]
    assert len(notes) == 1 and "1 row(s) over 100 %" in notes[0]
    assert "probe is stale" in notes[0] and "undercount" in notes[0]
    probes.values = [1e-6, 1e-6]
    (row,) = _json_rows(capsys, "-m", tiny_model, "-p", "0", "-n", "4", "-r", "1", "-t", "1")
    assert row["bw_over_100"] is True and row["bw_pct"] > 100


def test_cpu_simd_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx_vnni amx_tile\n"
        "processor\t: 1\nflags\t\t: fpu\n"
    )
    assert bench.cpu_simd_flags(str(info)) == [
        "amx_tile", "avx", "avx2", "avx512bw", "avx512f", "avx_vnni", "fma"
    ]  # fmt: skip
    assert bench.cpu_simd_flags(str(tmp_path / "missing")) == []
    assert bench.isa_line().startswith(f"ISA {_cpu.isa()} ")


def test_probe_is_cached_per_machine_and_probe_flag_redoes_it(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(bandwidth, "measure_read_bandwidth", lambda n=None: calls.append(n) or 5.0)
    p = bandwidth.read_bandwidth()
    assert p.cached and p.gbps == PROBE_GBPS and calls == []
    p = bandwidth.read_bandwidth(refresh=True)
    assert not p.cached and p.gbps == 5.0 and len(calls) == 1
    again = bandwidth.read_bandwidth()
    assert again.cached and again.gbps == 5.0 and len(calls) == 1
    assert again.key == p.key and f"{p.threads} threads" in p.key
    table = json.loads((tmp_path / "cache" / bandwidth.PROBE_FILE).read_text())
    assert table[p.key]["gbps"] == 5.0
    monkeypatch.setenv("NUMOE_CACHE", str(tmp_path / "elsewhere"))  # a new machine: measure
    assert not bandwidth.read_bandwidth().cached and len(calls) == 2


def test_the_probe_measures_something():
    gbps = bandwidth._best_rate(__import__("numpy").full(8 << 20, 1, "uint8"), 0.0, 2)
    assert math.isfinite(gbps) and gbps > 0.05


def test_tune_writes_the_config_that_bench_and_doctor_read(tiny_model, capsys, tmp_path):
    import os

    argv = ["tune", "-m", tiny_model, "-n", "4", "-r", "1", "-t", "1,2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("| tiny")]
    assert len(rows) == 2
    best = next(ln for ln in out.splitlines() if ln.startswith("best: -t "))
    n = int(best.split()[2].rstrip(":"))
    cfg = os.environ["NUMOE_CONFIG"]
    assert cfg == str(tmp_path / "config.toml")
    assert f"wrote {cfg}: threads = {n}" in out
    assert main(["doctor", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)["settings"]["values"]["threads"]
    assert st == {"value": n, "source": f"config {cfg}"}
    r = _json_rows(capsys, "-m", tiny_model, "-p", "0", "-n", "2", "-r", "1")
    assert [x["n_threads"] for x in r] == [n]
    r = _json_rows(capsys, "-m", tiny_model, "-p", "0", "-n", "2", "-r", "1", "-t", "1")
    assert [x["n_threads"] for x in r] == [1]  # a flag beats the file


def test_tune_no_write(tiny_model, capsys):
    import os

    assert main(["tune", "-m", tiny_model, "-n", "2", "-r", "1", "-t", "1", "--no-write"]) == 0
    assert "not written (--no-write)" in capsys.readouterr().out
    assert not os.path.exists(os.environ["NUMOE_CONFIG"])


def test_tune_says_when_a_variable_overrides_what_it_wrote(tiny_model, capsys, monkeypatch):
    monkeypatch.setenv("NUMOE_NUMA", "off")
    assert main(["tune", "-m", tiny_model, "-n", "2", "-r", "1", "-t", "1", "--numa", "off"]) == 0
    out = capsys.readouterr().out
    assert "best: -t 1 --numa off: tg2 " in out and 'threads = 1, numa = "off"' in out
    assert "note: NUMOE_NUMA=off is set and overrides the file" in out


@pytest.mark.parametrize(
    "argv, code, words",
    [
        (["bench", "-p", "0", "-n", "0"], 2, "nothing to measure"),
        (["bench", "-m", "/nonexistent/x.gguf", "-n", "1"], 1, "/nonexistent/x.gguf"),
    ],
)
def test_bench_errors_are_one_line(capsys, argv, code, words):
    assert main(argv) == code
    out, err = capsys.readouterr()
    err_lines = [ln for ln in err.splitlines() if ln.startswith("numoe: error")]
    assert out == "" and len(err_lines) == 1 and words in err_lines[0]
    assert "Traceback" not in err


def test_bad_sweep_lists_exit_2(capsys):
    for argv in (["bench", "-t", "1,x"], ["bench", "--numa", "off,interleave"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    assert "unknown policy 'interleave'" in capsys.readouterr().err


@pytest.mark.parametrize("tty", [True, False])
def test_load_progress(tiny_model, tty):
    g = open_gguf(tiny_model)
    stream = io.StringIO()
    prog = LoadProgress(g, "m.gguf", stream=stream, tty=tty)
    g.on_tensor = prog
    load(g)
    prog.finish("numoe: loaded m.gguf")
    text = stream.getvalue()
    assert prog.seen and len(prog.seen) <= len(g.tensors)
    assert prog.bytes == sum(g.tensors[n].nbytes for n in prog.seen)
    assert text.endswith("numoe: loaded m.gguf\n")
    if tty:
        assert text.startswith("\rnumoe: loading m.gguf [") and f"/{len(g.tensors)} tensors" in text
    else:
        assert text == "numoe: loaded m.gguf\n"


def test_run_and_chat_report_tokens_per_second(tiny_model, capsys, monkeypatch):
    assert main(["run", "-m", tiny_model, "-p", "hi", "-n", "3", "--temp", "0"]) == 0
    err = capsys.readouterr().err
    assert "numoe: loaded tiny-v2-q4_k_m.gguf" in err and " s\n" in err
    assert "prompt: " in err and "generation: " in err and err.count("tok/s") == 2
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nagain\n"))
    assert main(["chat", "-m", tiny_model, "-n", "2", "--temp", "0", "--ignore-eos"]) == 0
    replies = [ln for ln in capsys.readouterr().err.splitlines() if "generation:" in ln]
    assert len(replies) == 2
    assert all("prompt: " in ln and ln.count("tok/s") == 2 for ln in replies)
