"""numoe doctor (numoe.doctor, numoe.cli.doctor) and the thread flags of run/chat: advice on
sysfs trees of real shapes, the JSON keys, the per-policy memory of a model, capture and
read-back, this machine, and one-line errors for flags this machine cannot honour."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from numa_fixtures import (
    cpu_node_without_memory,
    memory_only_node,
    one_node,
    twenty_four_nodes,
    two_sockets_32,
)

from numoe import _cpu, doctor
from numoe.cli import main
from numoe.cli.doctor import format_report
from numoe.runtime import pool
from numoe.runtime.numa import parse_numa_nodes, plan_threads
from numoe.runtime.topology import Topology

GiB = 2**30

REPORT_KEYS = {
    "numoe", "source", "live", "packages", "nodes", "online_cpus", "allowed_cpus",
    "allowed_mems", "smt", "libnuma", "numa_balancing", "thread_plan", "policy", "model",
    "settings", "advice",
}  # fmt: skip
NODE_KEYS = {
    "id", "cpus", "cores", "smt_siblings", "packages", "mem_total", "mem_free", "distances",
    "allowed_cpus", "memory_allowed",
}  # fmt: skip


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    mk = tmp_path_factory.mktemp
    return {
        "2x32": str(two_sockets_32(mk("a"))),
        "24": str(twenty_four_nodes(mk("b"))),
        "nomem": str(cpu_node_without_memory(mk("c"))),
        "memonly": str(memory_only_node(mk("d"))),
        "one": str(one_node(mk("e"), 8)),
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from numoe.synth import synth

    path = tmp_path_factory.mktemp("m") / "tiny.gguf"
    synth("tiny-qwen3moe", path, "Q8_0")
    return str(path)


def codes(report) -> set[str]:
    return {a["code"] for a in report["advice"]}


# --- advice on the shapes ------------------------------------------------------------------


def test_two_sockets(trees):
    r = doctor.diagnose(sysfs=trees["2x32"])
    assert codes(r) == set()  # a healthy 2-socket machine: nothing to fix
    assert r["policy"]["name"] == "shard" and r["policy"]["reason"] == "auto: 2 logical nodes"
    assert [g["cpus"] for g in r["thread_plan"]["groups"]] == [
        list(range(32)),
        list(range(32, 64)),
    ]
    assert r["libnuma"] is None and r["numa_balancing"] is None  # not this machine
    assert r["nodes"][0]["cores"] == list(range(32))
    assert r["nodes"][0]["smt_siblings"] == list(range(64, 96))
    smt = doctor.diagnose(sysfs=trees["2x32"], smt=True)
    assert codes(smt) == {"smt_threads"}
    assert smt["thread_plan"]["threads"] == 128
    capped = doctor.diagnose(sysfs=trees["2x32"], threads=500)
    assert codes(capped) == {"smt_threads", "threads_capped"}
    off = doctor.diagnose(sysfs=trees["2x32"], numa="off")
    assert codes(off) == set() and off["policy"]["name"] == "off"


def test_twenty_four_nodes(trees):
    r = doctor.diagnose(sysfs=trees["24"])
    assert codes(r) == {"many_small_nodes"}
    many = next(a for a in r["advice"] if a["code"] == "many_small_nodes")
    assert many["level"] == "warn" and "NPS1" in many["text"] and "12 per socket" in many["text"]
    assert len(r["thread_plan"]["groups"]) == 24 and r["thread_plan"]["threads"] == 192
    assert r["packages"] == [0, 1]


def test_container_confined(trees):
    allowed = list(range(40, 48)) + list(range(104, 112))
    r = doctor.diagnose(sysfs=trees["2x32"], allowed_cpus=allowed, allowed_mems=[1])
    assert codes(r) == {"confined"}
    text = next(a["text"] for a in r["advice"] if a["code"] == "confined")
    assert "16 of the 128 online CPUs" in text and "8 of 64 physical cores" in text
    assert "memory of nodes 1 only" in text
    assert r["policy"]["name"] == "off"
    assert r["thread_plan"]["groups"][0]["cpus"] == list(range(40, 48))
    assert r["allowed_mems"] == [1] and r["nodes"][0]["memory_allowed"] is False


def test_cpu_node_without_memory(trees):
    r = doctor.diagnose(sysfs=trees["nomem"])
    assert codes(r) == {"memoryless_node_cpus"}
    text = next(a["text"] for a in r["advice"] if a["code"] == "memoryless_node_cpus")
    assert "Node 1" in text and "from node 0" in text
    assert [g["mem_node"] for g in r["thread_plan"]["groups"]] == [0, 0]


def test_memory_only_node(trees):
    r = doctor.diagnose(sysfs=trees["memonly"])
    assert codes(r) == {"memory_only_node"}
    assert r["nodes"][1]["cpus"] == [] and r["nodes"][1]["mem_total"] == 64 * GiB
    assert r["thread_plan"]["groups"][0]["cpus"] == [0, 1, 2, 3]


def test_one_node(trees):
    assert codes(doctor.diagnose(sysfs=trees["one"])) == {"one_node"}
    split = doctor.diagnose(sysfs=trees["one"], numa_nodes=[0, 0])
    assert codes(split) == set()
    assert [g["split"] for g in split["thread_plan"]["groups"]] == [[0, 2], [1, 2]]


def test_process_facts_of_a_captured_machine(trees, tmp_path):
    """numoe-process.json beside the tree: balancing on and libnuma refused there."""
    facts = {
        "allowed_cpus": list(range(64)),
        "allowed_mems": [0, 1],
        "numa_balancing": 1,
        "libnuma": {"status": "refused", "text": "refused (numa_available() == -1)"},
    }
    import shutil

    root = tmp_path / "t"
    shutil.copytree(trees["2x32"], root)
    (root / doctor.PROCESS_FILE).write_text(json.dumps(facts))
    r = doctor.diagnose(sysfs=str(root))
    assert codes(r) == {"numa_balancing_on", "libnuma_refused", "confined"}
    assert r["libnuma"]["status"] == "refused" and r["numa_balancing"] == 1
    facts["libnuma"] = {"status": "missing", "text": "not installed"}
    (root / doctor.PROCESS_FILE).write_text(json.dumps(facts))
    assert "libnuma_missing" in codes(doctor.diagnose(sysfs=str(root)))
    (root / doctor.PROCESS_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not a numoe doctor capture"):
        doctor.diagnose(sysfs=str(root))


# --- memory per policy ---------------------------------------------------------------------


def test_memory_by_policy(trees):
    topo = Topology.read(trees["24"], allowed_cpus=list(range(384)))
    m = doctor.memory_by_policy(plan_threads(topo), 240 * GiB, 12 * GiB)
    assert m["off"] == {"per_node": {}, "map": 252 * GiB, "total": 252 * GiB}
    assert m["shard"]["per_node"] == {n: 10 * GiB for n in range(24)}
    assert m["shard"]["total"] == 252 * GiB  # one copy in total
    assert m["replicate"]["per_node"] == {n: 240 * GiB for n in range(24)}
    assert m["replicate"]["total"] == 24 * 240 * GiB + 12 * GiB
    # two logical nodes on one memory node: the node holds both halves (shard), both copies
    # (replicate: one per logical node, as numoe.layers.numa_experts does)
    one = Topology.read(trees["one"], allowed_cpus=list(range(8)))
    m = doctor.memory_by_policy(plan_threads(one, numa_nodes=[0, 0]), 10 * GiB, GiB)
    assert m["shard"]["per_node"] == {0: 10 * GiB} and m["replicate"]["per_node"] == {0: 20 * GiB}


def _fake_model(monkeypatch, experts, dense):
    def fake(path):
        return {
            "path": str(path),
            "arch": "deepseek2",
            "expert_bytes": experts,
            "dense_bytes": dense,
        }

    monkeypatch.setattr(doctor, "model_bytes", fake)


def test_insufficient_memory(trees, monkeypatch):
    _fake_model(monkeypatch, 400 * GiB, 20 * GiB)
    shard = doctor.diagnose(sysfs=trees["24"], model="x.gguf")
    assert "insufficient_memory" not in codes(shard)  # 400/24 GiB a node fits in 32
    rep = doctor.diagnose(sysfs=trees["24"], model="x.gguf", numa="replicate")
    text = next(a["text"] for a in rep["advice"] if a["code"] == "insufficient_memory")
    assert "node 0 needs 400.0 GiB" in text and "24 node(s) short" in text
    _fake_model(monkeypatch, 1000 * GiB, 20 * GiB)
    off = doctor.diagnose(sysfs=trees["2x32"], model="x.gguf", numa="off")
    text = next(a["text"] for a in off["advice"] if a["code"] == "insufficient_memory")
    assert "1020.0 GiB" in text and "512.0 GiB" in text
    out = format_report(off)
    assert "replicate" in out and "<- chosen" in out


def test_model_bytes_of_a_real_file(tiny):
    from numoe.gguf import open_gguf
    from numoe.roofline import is_routed_expert

    m = doctor.model_bytes(tiny)
    g = open_gguf(tiny)
    assert m["expert_bytes"] + m["dense_bytes"] == sum(t.nbytes for t in g.tensors.values())
    assert m["expert_bytes"] == sum(t.nbytes for n, t in g.tensors.items() if is_routed_expert(n))
    assert m["expert_bytes"] > 0 and m["arch"] == "qwen3moe"


# --- the command ---------------------------------------------------------------------------


def test_doctor_json_keys(trees, capsys):
    assert main(["doctor", "--json", "--sysfs", trees["2x32"]]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r) == REPORT_KEYS
    assert all(set(n) == NODE_KEYS for n in r["nodes"])
    assert set(r["thread_plan"]) == {
        "threads", "requested", "smt", "numa_nodes", "smt_cpus", "groups", "text"
    }  # fmt: skip
    assert set(r["thread_plan"]["groups"][0]) == {
        "index",
        "node",
        "mem_node",
        "split",
        "cpus",
        "cores",
    }
    assert set(r["policy"]) == {"requested", "name", "reason"}
    assert all(set(a) == {"code", "level", "text"} for a in r["advice"])
    assert all(a["code"] in doctor.ADVICE and a["level"] in ("info", "warn") for a in r["advice"])


def test_doctor_text_on_fixtures(trees, capsys):
    assert main(["doctor", "--sysfs", trees["24"], "-t", "48"]) == 0
    out = capsys.readouterr().out
    assert "2 socket(s), 24 NUMA node(s), 384 CPUs online = 192 physical cores (SMT)" in out
    assert "libnuma:        unknown (not this machine)" in out
    assert "48 threads in 24 group(s)" in out and "[many_small_nodes]" in out
    assert main(["doctor", "--sysfs", trees["2x32"], "--allowed-cpus", "0-7", "--numa", "off"]) == 0
    out = capsys.readouterr().out
    assert "CPUs 0-7 (of 0-127 online)" in out and "[confined]" in out


def test_doctor_with_a_model(tiny, capsys):
    assert main(["doctor", "-m", tiny, "--numa-nodes", "0,0", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    m = r["model"]
    assert set(m["policies"]) == {"off", "shard", "replicate"}
    assert m["policies"]["off"]["total"] == m["expert_bytes"] + m["dense_bytes"]
    assert main(["doctor", "-m", tiny]) == 0
    out = capsys.readouterr().out
    assert "routed experts" in out and "shard" in out and "replicate" in out


def test_doctor_on_this_machine():
    p = subprocess.run(
        [sys.executable, "-m", "numoe", "doctor"], capture_output=True, text=True, check=False
    )
    assert p.returncode == 0, p.stderr
    for line in ("machine:", "allowed:", "libnuma:", "NUMA balancing:", "thread plan:", "advice:"):
        assert line in p.stdout
    r = doctor.diagnose()
    assert r["live"] and r["libnuma"]["status"] in ("ok", "missing", "refused")
    assert r["allowed_cpus"] == sorted(_cpu.sched_getaffinity())


def test_capture_and_read_back(tmp_path, capsys):
    dst = tmp_path / "cap"
    assert main(["doctor", "--capture", str(dst), "--json"]) == 0
    here = json.loads(capsys.readouterr().out)
    there = doctor.diagnose(sysfs=str(dst))
    for k in ("online_cpus", "allowed_cpus", "allowed_mems", "smt", "numa_balancing", "packages"):
        assert there[k] == here[k], k
    assert there["libnuma"]["status"] == here["libnuma"]["status"]
    assert there["thread_plan"]["groups"] == here["thread_plan"]["groups"]
    for a, b in zip(there["nodes"], here["nodes"], strict=True):
        assert (a["id"], a["cpus"], a["cores"], a["distances"]) == (
            b["id"], b["cpus"], b["cores"], b["distances"]
        )  # fmt: skip
        if not Topology.read().nodes[0].synthetic:
            assert a["mem_total"] == b["mem_total"]


# --- flags ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--numa-nodes", "4095"], "--numa-nodes 4095: this machine has nodes"),
        (["doctor", "--numa-nodes", "4095"], "--numa-nodes 4095: this machine has nodes"),
        (["doctor", "--sysfs", "/nonexistent-numoe"], "no devices/system directory"),
    ],
)
def test_flags_this_machine_cannot_honour(capsys, tiny, argv, message):
    if argv[0] == "run":
        argv = [*argv, "-m", tiny]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("numoe: error: ") and message in lines[0]


def test_numa_nodes_listed_too_often(trees, capsys):
    assert main(["doctor", "--sysfs", trees["one"], "--numa-nodes", "0,0,0,0,0,0,0,0,0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "numoe: error: --numa-nodes 0,0,0,0,0,0,0,0,0: node 0 is listed 9 times but has 8 "
        "physical cores this process may use"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--numa-nodes", "x"],
        ["run", "--numa-nodes", "1-0"],
        ["run", "--numa", "interleave"],
        ["chat", "--cpu-infer", "0"],
        ["doctor", "--numa-nodes", "0-"],
        ["doctor", "--allowed-cpus", "3-1"],
    ],
)
def test_bad_flag_syntax_exits_2(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err


def test_run_with_numa_nodes_and_cpu_infer(capsys, tiny):
    """--numa-nodes N,N splits this machine's node in two pool groups and shards the experts
    over them (the load line names the policy). --cpu-infer is -t."""
    topo = Topology.read()
    n0 = plan_threads(topo).nodes[0].node
    twice = len(topo.cores_by_node()[n0]) >= 2
    nodes = f"{n0},{n0}" if twice else str(n0)
    try:
        argv = ["run", "-m", tiny, "-p", "hi", "-n", "2", "--temp", "0", "--numa-nodes", nodes]
        assert main(argv) == 0
        err = capsys.readouterr().err
        plan = plan_threads(topo, None, parse_numa_nodes(nodes))
        assert pool.thread_groups() == plan.groups
        if twice:
            assert len(plan.groups) == 2 and ", NUMA shard," in err
        assert main(["run", "-m", tiny, "-p", "hi", "-n", "1", "--cpu-infer", "1"]) == 0
        err = capsys.readouterr().err
        assert pool.num_threads() == 1 and "with 1 thread, NUMA off," in err
    finally:
        pool.set_threads(None)
