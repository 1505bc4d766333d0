"""`numoe doctor`: the machine as numoe sees it, the plan it would run, and advice."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from ..quote import one_line
from .common import HELP_FMT, FlagError, add_thread_args, setting_label


def _cpulist_arg(s: str) -> list[int]:
    from .. import _cpu

    try:
        return _cpu.parse_cpulist(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_parser(sub) -> None:
    p = sub.add_parser(
        "doctor",
        help="show the NUMA topology, the thread plan and policy numoe would use, and advice",
        description="Print the CPU/NUMA topology (nodes, cores, SMT, memory, distances), what "
        "this process may use, libnuma and NUMA balancing status, the thread plan and NUMA "
        "policy numoe would choose with the given flags, the memory a model needs per node "
        "under each policy, each setting and where it came from (flag, NUMOE_* variable, "
        "config file or default), and advice.",
        formatter_class=HELP_FMT,
    )
    p.add_argument(
        "-m", "--model", "--gguf-path", "--gguf_path", dest="model", default=None,
        help="GGUF file (a split model: its first shard or directory): show the memory per "
        "node it needs under each --numa policy "
        "(default: no model)",
    )  # fmt: skip
    p.add_argument(
        "--sysfs", metavar="DIR", default=None,
        help="read DIR as the /sys root: a topology captured on another machine "
        "(numoe doctor --capture DIR there) (default: this machine's /sys)",
    )  # fmt: skip
    p.add_argument(
        "--allowed-cpus", type=_cpulist_arg, default=None, metavar="LIST",
        help="CPUs the process may use, e.g. 0-7 (default: this process's affinity; with "
        "--sysfs: every online CPU of the tree)",
    )  # fmt: skip
    p.add_argument(
        "--allowed-mems", type=_cpulist_arg, default=None, metavar="LIST",
        help="memory nodes the process may use (default: Mems_allowed_list; with --sysfs: "
        "every node)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--capture", metavar="DIR", default=None,
        help="copy the sysfs files numoe reads, and this process's NUMA facts, to DIR "
        "(send it along for `numoe doctor --sysfs DIR` elsewhere), then report as usual "
        "(default: no capture)",
    )  # fmt: skip
    add_thread_args(p.add_argument_group("thread plan (as for run and chat)"))
    p.set_defaults(func=main)


def main(args) -> int:
    from .. import config, doctor
    from ..config import SETTINGS
    from ..runtime.numa import PlanError, parse_numa_nodes

    # a bad config file or NUMOE_* variable is the first finding, not the end of the report
    problems: list[str] = []
    settings = config.resolve(args, tuple(SETTINGS), errors=problems)
    if args.sysfs and not (Path(args.sysfs) / "devices" / "system").is_dir():
        raise FlagError(f"--sysfs {args.sysfs}: no devices/system directory under it")
    if args.capture:
        n = doctor.capture(args.capture)
        print(f"numoe: wrote {n} files to {args.capture}", file=sys.stderr)
    ignored = any(p.startswith("config ") for p in problems)  # the file: passed over

    def diagnose(numa_nodes):
        return doctor.diagnose(
            sysfs=args.sysfs,
            allowed_cpus=args.allowed_cpus,
            allowed_mems=args.allowed_mems,
            threads=args.threads,
            numa_nodes=parse_numa_nodes(numa_nodes) if numa_nodes else None,
            smt=args.smt,
            numa=args.numa,
            model=args.model,
            settings={
                "config_file": str(args.config_file),
                "config_found": args.config_file.is_file(),
                "config_ignored": ignored,
                "values": {
                    k: {
                        "value": "(set)" if k == "api_key" and r.value else r.value,
                        "source": r.source,
                    }
                    for k, r in settings.items()
                },
            },
        )

    try:
        report = diagnose(args.numa_nodes)
    except PlanError as e:
        label = setting_label(args, "numa_nodes")
        if label.startswith("--"):
            raise FlagError(f"{label}: {e}") from None
        problems.append(f"{label}: {e}; the plan below uses every node")  # not a flag: report
        report = diagnose(None)
    for i, text in enumerate(problems):
        report["advice"].insert(i, {"code": "config_error", "level": "warn", "text": text})
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        sys.stdout.write(format_report(report))
    return 0


def _gib(n: int) -> str:
    """Bytes as GiB, or MiB below 1 GiB (small models)."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 or n == 0 else f"{n / 2**20:.1f} MiB"


def _distances(d: list[int]) -> str:
    """The distance line; beyond 8 nodes as value x count ('10, 12 x11, 32 x12')."""
    if len(d) <= 8:
        return " ".join(map(str, d))
    return ", ".join(f"{v} x{d.count(v)}" if d.count(v) > 1 else str(v) for v in sorted(set(d)))


def _setting_text(name: str, value) -> str:
    if name == "api_key" and value is not None:
        return "(set)"  # never printed
    if value is None:
        return {"threads": "(all cores)", "numa_nodes": "(all nodes)"}.get(name, "-")
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def format_report(r: dict) -> str:
    from ..runtime.numa import format_ids

    out: list[str] = []
    w = out.append
    nodes = r["nodes"]
    where = "this machine" if r["live"] else "captured tree"
    w(f"numoe {r['numoe']} doctor: {r['source']} ({where})")
    n_cores = sum(len(n["cores"]) for n in nodes)
    smt = "SMT" if r["smt"] else "no SMT"
    total = sum(n["mem_total"] for n in nodes)
    w(
        f"machine: {len(r['packages'])} socket(s), {len(nodes)} NUMA node(s), "
        f"{len(r['online_cpus'])} CPUs online = {n_cores} physical cores ({smt}), "
        f"{_gib(total)} memory"
    )
    w("")
    w(
        f"  {'node':>4}  {'cpus':<16} {'cores':>5} {'socket':>6}  {'memory':>10} {'free':>10}  distances"
    )
    for n in nodes:
        cpus = format_ids(n["cpus"]) or "-"
        sock = ",".join(map(str, n["packages"])) or "-"
        mem = _gib(n["mem_total"]) if n["mem_total"] else "none"
        free = _gib(n["mem_free"]) if n["mem_total"] else "-"
        dist = _distances(n["distances"])
        w(
            f"  {n['id']:>4}  {cpus:<16} {len(n['cores']):>5} {sock:>6}  {mem:>10} {free:>10}  {dist}"
        )
    w("")
    online, allowed = r["online_cpus"], r["allowed_cpus"]
    all_mems = [n["id"] for n in nodes]
    cpus_note = "all online" if allowed == online else f"of {format_ids(online)} online"
    mems_note = "all" if r["allowed_mems"] == all_mems else f"of {format_ids(all_mems)}"
    w(
        f"allowed:        CPUs {format_ids(allowed) or 'none'} ({cpus_note}); memory of "
        f"nodes {format_ids(r['allowed_mems']) or 'none'} ({mems_note})"
    )
    lib = r["libnuma"]
    w(f"libnuma:        {lib['text'] if lib else 'unknown (not this machine)'}")
    bal = r["numa_balancing"]
    bal_text = {None: "unknown", 0: "off"}.get(bal, f"on ({bal})")
    w(f"NUMA balancing: {bal_text}")
    # wrap between groups, never inside one
    text = r["thread_plan"]["text"]
    head, *groups = text.split(" [")
    words = [head] + ["[" + g.replace(" ", "\0") for g in groups]
    wrapped = textwrap.fill(
        " ".join(words),
        96,
        subsequent_indent=" " * 16,
        initial_indent=" " * 16,
        break_long_words=False,
    )
    w("thread plan:" + wrapped[12:].replace("\0", " "))
    pol = r["policy"]
    w(f"NUMA policy:    {pol['name']} ({pol['reason']})")
    m = r["model"]
    if m:
        w("")
        files = f", {len(m['files'])} files" if len(m.get("files", ())) > 1 else ""
        arch = one_line(m["arch"], 60)  # from the file: escaped, cut short
        w(
            f"model: {m['path']} ({arch}{files}): routed experts {_gib(m['expert_bytes'])}, "
            f"dense {_gib(m['dense_bytes'])}"
        )
        sh = m.get("shard")
        if sh:
            w(
                f"  -m names shard {sh['index']} of {sh['count']} of a split model: numoe reads "
                f"all {sh['count']} files, from the first ({Path(sh['first']).name})"
            )
        for name, need in m["policies"].items():
            per = need["per_node"]
            if per:
                vals = sorted(set(per.values()))
                each = _gib(vals[0]) if len(vals) == 1 else "/".join(_gib(v) for v in vals)
                node_text = (
                    f"{each} on node {next(iter(per))}"
                    if len(per) == 1
                    else f"{each} on each of nodes {format_ids(per)}"
                )
            else:
                node_text = "nothing node-bound"
            mark = " <- chosen" if name == pol["name"] else ""
            w(
                f"  {name:<9} {node_text}; + {_gib(need['map'])} from the memory map; "
                f"total {_gib(need['total'])}{mark}"
            )
        w("  (memory-map pages sit on the node of the thread that first read them)")
        pc = m.get("page_cache")
        if pc:
            parts = [f"{_gib(v)} on node {k}" for k, v in sorted(pc["per_node"].items())]
            if pc["unknown_node"]:
                parts.append(f"{_gib(pc['unknown_node'])} on an unknown node")
            if pc["not_resident"] or not parts:
                parts.append(f"{_gib(pc['not_resident'])} not cached")
            w(f"  page cache now: {', '.join(parts)}")
    st = r.get("settings")
    if st:
        found = "" if st["config_found"] else " (none there)"
        if st.get("config_ignored"):
            found = " (a bad value: not used, see advice)"
        w("")
        w("settings:       flag > NUMOE_* variable > config file > default")
        w(f"config file:    {st['config_file']}{found}")
        for name, v in st["values"].items():
            w(f"  {name:<12}  {_setting_text(name, v['value']):<14} {v['source']}")
    w("")
    w("advice:" if r["advice"] else "advice: none")
    for a in r["advice"]:
        mark = "!" if a["level"] == "warn" else "-"
        text = f"{mark} [{a['code']}] {a['text']}"
        w(textwrap.fill(text, width=96, initial_indent="  ", subsequent_indent="      "))
    return "\n".join(out) + "\n"
