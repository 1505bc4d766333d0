"""A structure-aware GGUF fuzzer (tests/test_fuzz_gguf.py) and its driver.

`Doc` is a GGUF file taken apart (header, typed metadata, tensor infos, data) so that a
mutant changes one thing in a place numoe reads: a header field, a metadata value's type or
range, a tensor info, a tensor's data (NaN, inf), the chat template, or the file's length.
`mutants(bases, seed)` makes the list; `python tests/gguf_fuzz.py JOBS.json START` runs
jobs START.. in one process, as `numoe run -m FILE -p hi -n 2` (or `numoe chat` with one
message) would, and prints one JSON line per job: a crash (a signal) leaves the job it was
running without its line, so the parent can name it and start a new driver after it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import resource
import signal
import struct
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

# GGUF value types (gguf.GGUFValueType), spelled out so that the driver imports nothing
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<B",
        U64: "<Q", I64: "<q", F64: "<d"}  # fmt: skip
# tensor types used below (gguf.GGMLQuantizationType)
T_F32, T_F16, T_Q4_0, T_Q8_0, T_Q4_K, T_Q6_K, T_IQ2_XXS, T_BF16 = 0, 1, 2, 8, 12, 14, 16, 30
MAX_LINE = 400  # longest stderr line a clean error may print


# ---------------------------------------------------------------- the file, taken apart


@dataclass
class KV:
    key: str
    vtype: int
    value: object  # a scalar, a str, or (element type, list) for ARR


@dataclass
class TInfo:
    name: str
    ne: list[int]
    ttype: int
    offset: int


@dataclass
class Doc:
    version: int
    kvs: list[KV]
    tinfos: list[TInfo]
    data: bytes
    align: int = 32
    magic: bytes = b"GGUF"
    n_kv: int | None = None  # header counts, when not the real ones
    n_tensors: int | None = None
    cut: int | None = None  # truncate the file to this many bytes

    def copy(self) -> Doc:
        return replace(self, kvs=[replace(k) for k in self.kvs],
                       tinfos=[replace(t, ne=list(t.ne)) for t in self.tinfos])  # fmt: skip

    def kv(self, key: str) -> KV | None:
        return next((k for k in self.kvs if k.key == key), None)

    def set(self, key: str, vtype: int, value) -> None:
        k = self.kv(key)
        if k is None:
            self.kvs.append(KV(key, vtype, value))
        else:
            k.vtype, k.value = vtype, value

    def drop(self, key: str) -> None:
        self.kvs = [k for k in self.kvs if k.key != key]

    def tinfo(self, name: str) -> TInfo:
        return next(t for t in self.tinfos if t.name == name)

    def tensor_span(self, name: str) -> tuple[int, int]:
        """(start, end) of a tensor's bytes in `data`."""
        t = self.tinfo(name)
        block, size = _SIZES[t.ttype]
        return t.offset, t.offset + int(np.prod(t.ne)) // block * size

    @property
    def arch(self) -> str:
        return self.kv("general.architecture").value

    def to_bytes(self) -> bytes:
        out = [self.magic, struct.pack("<I", self.version)]
        out.append(struct.pack("<QQ", len(self.tinfos) if self.n_tensors is None else self.n_tensors,
                               len(self.kvs) if self.n_kv is None else self.n_kv))  # fmt: skip
        for k in self.kvs:
            out += [_str(k.key), struct.pack("<I", k.vtype), _value(k.vtype, k.value)]
        for t in self.tinfos:
            out += [_str(t.name), struct.pack("<I", len(t.ne)), struct.pack(f"<{len(t.ne)}Q", *t.ne),
                    struct.pack("<IQ", t.ttype, t.offset)]  # fmt: skip
        head = b"".join(out)
        blob = head + b"\0" * (-len(head) % self.align) + self.data
        return blob if self.cut is None else blob[: self.cut]


def _str(s: str | bytes) -> bytes:
    b = s.encode("utf-8", "surrogateescape") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def _value(vtype: int, v) -> bytes:
    if vtype == STR:
        return _str(v)
    if vtype == ARR:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(_value(et, x) for x in items)
    return struct.pack(_FMT[vtype], v)


def parse(blob: bytes) -> Doc:
    """A valid GGUF file (numoe's own writer's) taken apart."""
    off = 0

    def take(fmt):
        nonlocal off
        v = struct.unpack_from(fmt, blob, off)
        off += struct.calcsize(fmt)
        return v[0] if len(v) == 1 else v

    def string():
        nonlocal off
        n = take("<Q")
        off += n
        return blob[off - n : off].decode("utf-8")

    def value(vt):
        if vt == STR:
            return string()
        if vt == ARR:
            et, n = take("<I"), take("<Q")
            return et, [value(et) for _ in range(n)]
        v = take(_FMT[vt])
        return bool(v) if vt == BOOL else v

    assert blob[:4] == b"GGUF"
    off = 4
    version, n_t, n_kv = take("<I"), take("<Q"), take("<Q")
    kvs = []
    for _ in range(n_kv):
        key = string()
        vt = take("<I")
        kvs.append(KV(key, vt, value(vt)))
    tinfos = []
    for _ in range(n_t):
        name = string()
        nd = take("<I")
        ne = [take("<Q") for _ in range(nd)]
        tinfos.append(TInfo(name, ne, take("<I"), take("<Q")))
    align = next((k.value for k in kvs if k.key == "general.alignment"), 32)
    start = -(-off // align) * align
    return Doc(version, kvs, tinfos, blob[start:], align)


_SIZES = {T_F32: (1, 4), T_F16: (1, 2), T_BF16: (1, 2), T_Q4_0: (32, 18), T_Q8_0: (32, 34),
          T_Q4_K: (256, 144), 13: (256, 176), T_Q6_K: (256, 210), T_IQ2_XXS: (256, 66)}  # fmt: skip


def make_bases(tmp: Path) -> dict[str, bytes]:
    """The valid tiny files mutated: a qwen3moe with K-quant weights (Q8_K activations), a
    DeepSeek-V3-shaped deepseek2 (YaRN, sigmoid group routing) in Q8_0 and a Mixtral-shaped
    llama in F16."""
    import dataclasses

    from numoe.convert import keep_f32
    from numoe.gguf.write import write_gguf
    from numoe.models import get as get_arch
    from numoe.synth import preset_config, random_tensor
    from numoe.text import synth_vocab_metadata

    q3 = dataclasses.replace(preset_config("tiny-qwen3moe"), n_vocab=320, n_embd=256,
                             head_dim=64, n_expert=4, n_ff_exp=256)  # fmt: skip
    ds = dataclasses.replace(preset_config("tiny-v3"), n_vocab=320, n_ctx_train=128)
    mx = dataclasses.replace(preset_config("tiny-mixtral"), n_vocab=330, n_expert=4)
    out = {}
    rng = np.random.default_rng(0)
    for name, cfg, qtype in (("q3k", q3, "Q4_K_M"), ("ds", ds, "Q8_0"), ("mx", mx, "F16")):
        arch = get_arch(cfg.arch)
        tensors = {n: random_tensor(rng, n, s) for n, s in arch.tensor_specs(cfg).items()}
        meta = dict(arch.gguf_metadata(cfg)) | {"general.name": name}
        meta |= synth_vocab_metadata(cfg.n_vocab, getattr(arch, "TOKENIZER_KIND", "gpt2"))
        path = tmp / f"{name}.gguf"
        write_gguf(path, cfg.arch, meta, tensors, qtype, keep_f32=keep_f32)
        out[name] = path.read_bytes()
    return out


# ---------------------------------------------------------------- mutants


@dataclass
class Mutant:
    name: str  # what was changed (for messages)
    doc: Doc
    mode: str = "run"  # "run": numoe run; "chat": numoe chat with one message
    expect: str = "any"  # "any": a clean error or a run; "fail": a clean error; "ok": a run
    must_say: tuple[str, ...] = field(default=())  # fragments of the error line ("fail")


BAD_NAME = "\x1b[2J\x1b[31mevil\x07" + "A" * 5000  # terminal escapes, and long
NAN32 = struct.pack("<f", math.nan)


def _retypes(v):
    """Values of the wrong type or range for a metadata value like `v`."""
    return [
        (STR, "12"), (F32, 2.5), (ARR, (U32, [2, 2])), (BOOL, True), (I32, -1), (U32, 0),
        (U64, 2**40), (F32, math.nan), (F64, math.inf), (F32, -1.0), (F32, 0.0),
        (STR, BAD_NAME), (ARR, (STR, ["a"])), (I64, -(2**62)),
    ]  # fmt: skip


def _fill(doc: Doc, name: str, byte_pattern: bytes) -> None:
    s, e = doc.tensor_span(name)
    n = e - s
    fill = (byte_pattern * (n // len(byte_pattern) + 1))[:n]
    doc.data = doc.data[:s] + fill + doc.data[e:]


def _fill_values(doc: Doc, name: str, x: float) -> None:
    """Every value of a tensor = x (F32/F16/BF16), or every scale of a quantized one."""
    t = doc.tinfo(name)
    if t.ttype == T_F32:
        _fill(doc, name, struct.pack("<f", x))
    elif t.ttype in (T_F16,):
        _fill(doc, name, np.float16(x).tobytes())
    elif t.ttype == T_BF16:
        _fill(doc, name, struct.pack("<f", x)[2:])
    else:  # quantized (every type's blocks have an even size, the fp16 scales at even
        # offsets): bytes 0xFF make every scale NaN (0xFFFF), 00 7C every scale inf (0x7C00)
        _fill(doc, name, b"\xff" if math.isnan(x) else b"\x00\x7c")


HOSTILE_TEMPLATES = [
    # (template, what the error must say) -- each must end quickly in a one-line error
    ("{{ messages.__class__.__mro__ }}", ()),
    ("{{ ''.__class__.__subclasses__() }}", ()),
    ("{% for m in messages %}{{ m.content", ()),  # syntax error
    ("{{ raise_exception('no system role ' + '\x1b[2J' * 3) }}", ("no system role",)),
    ("{{ undefined_thing.attr }}", ()),
    ("{% include 'x.j2' %}", ()),
    ("{% extends 'base.j2' %}", ()),
    ("{% for i in range(10**9) %}{% endfor %}", ()),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", ()),
    (
        (
            "{% set s = namespace(v='ab') %}{% for i in range(64) %}{% set s.v = s.v ~ s.v %}"
            "{% endfor %}{{ s.v }}"
        ),
        (),
    ),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", ()),
    ("{{ 'x' * 10**10 }}", ()),
    ("{% for i in range(10**7) %}xxxxxxxxxxxxxxxxxxxx{% endfor %}", ()),
    ("{{ messages[0]['content'] * 100000000 }}", ()),
    ("{{ (messages | tojson) * 10**8 }}", ()),
    ("{{ '%999999999d' % 1 }}", ()),
    ("{{ 10 ** 100000000 }}", ()),
    ("{{ 'x' | center(10**9) }}", ()),
]
GOOD_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% endfor %}"


def mutants(bases: dict[str, bytes], seed: int) -> list[Mutant]:
    """Seeded mutants of the base files (name -> bytes of a valid tiny model)."""
    rng = np.random.default_rng(seed)
    out: list[Mutant] = []
    docs = {n: parse(b) for n, b in bases.items()}
    names = list(docs)

    def pick():
        n = names[int(rng.integers(len(names)))]
        return n, docs[n].copy()

    # header
    for n, d0 in docs.items():
        for label, change in [
            ("version 1", {"version": 1}), ("version 4", {"version": 4}),
            ("big-endian", {"version": 3 << 24}), ("magic", {"magic": b"GGUG"}),
            ("n_kv + 1", {"n_kv": len(d0.kvs) + 1}), ("n_kv - 1", {"n_kv": len(d0.kvs) - 1}),
            ("n_tensors + 1", {"n_tensors": len(d0.tinfos) + 1}),
            ("n_tensors - 1", {"n_tensors": len(d0.tinfos) - 1}),
            ("n_kv huge", {"n_kv": 2**62}),
        ]:  # fmt: skip
            out.append(Mutant(f"{n}: header {label}", replace(d0.copy(), **change), expect="fail"))
        d = d0.copy()
        d.set("general.alignment", U32, 3)
        out.append(Mutant(f"{n}: alignment 3", d, expect="fail"))
        d = d0.copy()
        d.set("general.architecture", STR, BAD_NAME)
        out.append(Mutant(f"{n}: architecture escapes", d, expect="fail"))

    # metadata: every key numoe reads, retyped or out of range
    for n, d0 in docs.items():
        keys = [k.key for k in d0.kvs if k.key.startswith(d0.arch + ".")]
        keys += ["tokenizer.ggml.model", "tokenizer.ggml.bos_token_id",
                 "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token"]  # fmt: skip
        for key in keys:
            k = d0.kv(key)
            choices = _retypes(k.value if k else None)
            picks = rng.choice(len(choices), size=2, replace=False)
            for i in picks:
                vt, v = choices[int(i)]
                d = d0.copy()
                d.set(key, vt, v)
                out.append(Mutant(f"{n}: {key} = {vt}:{str(v)[:20]!r}", d))
            if k is not None:
                d = d0.copy()
                d.drop(key)
                out.append(Mutant(f"{n}: no {key}", d))
        # counts and ids that must be refused
        a = d0.arch
        for key, v, say in [
            (f"{a}.block_count", 1, "block_count"), (f"{a}.block_count", 0, "block_count"),
            (f"{a}.block_count", -1, "block_count"), (f"{a}.block_count", 3, ""),
            (f"{a}.attention.head_count", 0, "head_count"),
            (f"{a}.embedding_length", 0, "embedding_length"),
            (f"{a}.vocab_size", 10**6, ""), (f"{a}.vocab_size", 0, "vocab_size"),
            (f"{a}.expert_used_count", 99, "expert_used_count"),
            (f"{a}.expert_count", 0, ""),
            ("tokenizer.ggml.eos_token_id", 10**6, "eos_token_id"),
        ]:  # fmt: skip
            d = d0.copy()
            d.set(key, I32, v)
            out.append(
                Mutant(f"{n}: {key} = {v}", d, expect="fail", must_say=(say,) if say else ())
            )
        for key, v in [(f"{a}.attention.layer_norm_rms_epsilon", math.nan),
                       (f"{a}.attention.layer_norm_rms_epsilon", -1.0),
                       (f"{a}.rope.freq_base", 0.0), (f"{a}.rope.freq_base", math.nan),
                       (f"{a}.rope.freq_base", -1.0)]:  # fmt: skip
            d = d0.copy()
            d.set(key, F32, v)
            out.append(Mutant(f"{n}: {key} = {v}", d, expect="fail", must_say=(key,)))
        # the token list: shorter than the vocabulary, empty, not strings
        tok = d0.kv("tokenizer.ggml.tokens")
        for label, value in [("short", (STR, tok.value[1][:-7])), ("empty", (STR, [])),
                             ("ints", (I32, list(range(len(tok.value[1])))))]:  # fmt: skip
            d = d0.copy()
            d.set("tokenizer.ggml.tokens", ARR, value)
            out.append(Mutant(f"{n}: tokens {label}", d, expect="fail"))

    # yarn factors (deepseek2)
    for n, d0 in docs.items():
        if d0.kv(f"{d0.arch}.rope.scaling.factor") is None:
            continue
        for key in ("rope.scaling.factor", "rope.scaling.yarn_log_multiplier",
                    "rope.scaling.yarn_beta_fast", "rope.scaling.original_context_length"):  # fmt: skip
            for v in (math.nan, -4.0):
                d = d0.copy()
                d.set(f"{d0.arch}.{key}", F32, v)
                out.append(Mutant(f"{n}: {key} = {v}", d, expect="fail", must_say=(key,)))

    # tensor infos: F32 router and norms re-typed as F16 / BF16 (their bytes then read as
    # other values, NaN and inf among them), then random changes
    for n, d0 in docs.items():
        for name in ("blk.1.ffn_gate_inp.weight", "blk.0.attn_norm.weight", "output_norm.weight"):
            for tt in (T_F16, T_BF16):
                d = d0.copy()
                if d.tinfo(name).ttype == T_F32:
                    d.tinfo(name).ttype = tt
                    out.append(Mutant(f"{n}: {name} re-typed {tt}", d))
    for _ in range(40):
        n, d = pick()
        t = d.tinfos[int(rng.integers(len(d.tinfos)))]
        what = int(rng.integers(8))
        if what == 0:  # re-typed to a type of the same or a smaller size
            t.ttype = {T_F32: T_F16, T_F16: T_BF16, T_Q8_0: T_Q4_0, T_Q4_K: T_IQ2_XXS}.get(
                t.ttype, T_F32 if t.ttype == T_BF16 else 200
            )
            label = f"type of {t.name} -> {t.ttype}"
        elif what == 1:
            t.ne = t.ne[::-1]
            label = f"{t.name} dims reversed"
        elif what == 2:
            t.ne[-1] = max(1, t.ne[-1] // 2)
            label = f"{t.name} last dim halved"
        elif what == 3:
            t.offset += d.align
            label = f"{t.name} offset + align"
        elif what == 4:
            t.offset = 2**60
            label = f"{t.name} offset past end"
        elif what == 5:
            t.name = BAD_NAME
            t.ttype = 200 if rng.integers(2) else t.ttype  # unknown: named by the parser
            label = f"a tensor named with escapes, type {t.ttype}"
        elif what == 6:
            d.tinfos.remove(t)
            label = f"no {t.name}"
        else:  # an extra block's tensor, a copy at the end (block_count then misses it)
            s, e = d.tensor_span(t.name)
            off = -(-len(d.data) // d.align) * d.align
            d.data = d.data + b"\0" * (off - len(d.data)) + d.data[s:e]
            name = re.sub(r"^blk\.\d+\.", "blk.7.", t.name)
            if name == t.name:
                name = "blk.7.attn_norm.weight"
            d.tinfos.append(TInfo(name, list(t.ne), t.ttype, off))
            out.append(Mutant(f"{n}: {t.name} again as {name}", d, expect="fail",
                              must_say=("block_count is 2 but the file has tensors of block 7",)))  # fmt: skip
            continue
        out.append(Mutant(f"{n}: {label}", d))

    # tensor data: NaN / inf / huge, in the tensors where they reach the logits
    for n, d0 in docs.items():
        targets = [t.name for t in d0.tinfos
                   if any(s in t.name for s in ("attn_norm", "ffn_norm", "output_norm",
                                                "ffn_gate_inp.", "token_embd", "attn_q",
                                                "ffn_down", "attn_output", "exp_probs_b"))]  # fmt: skip
        for name in rng.choice(targets, size=min(8, len(targets)), replace=False):
            for x in (math.nan, math.inf):
                d = d0.copy()
                _fill_values(d, str(name), x)
                out.append(Mutant(f"{n}: {name} all {x}", d))
        d = d0.copy()
        _fill_values(d, "output_norm.weight", math.nan)
        out.append(Mutant(f"{n}: output_norm NaN", d, expect="fail", must_say=("NaN",)))

    # chat templates from the file
    for tmpl, say in HOSTILE_TEMPLATES:
        n, d = pick()
        d.set("tokenizer.chat_template", STR, tmpl)
        out.append(Mutant(f"{n}: template {tmpl[:40]!r}", d, mode="chat", expect="fail",
                          must_say=("chat template: ", *say)))  # fmt: skip
    for n, d0 in docs.items():  # a template that works, and the files as they are
        d = d0.copy()
        d.set("tokenizer.chat_template", STR, GOOD_TEMPLATE)
        out.append(Mutant(f"{n}: a good template", d, mode="chat", expect="ok"))
        out.append(Mutant(f"{n}: unchanged", d0.copy(), expect="ok"))

    # truncations: in the header and in the data
    for n, d0 in docs.items():
        size = len(d0.to_bytes())
        head = size - len(d0.data)
        for cut in sorted({*rng.integers(0, head, 4).tolist(), head, size - 1,
                           *rng.integers(head, size, 2).tolist()}):  # fmt: skip
            d = d0.copy()
            d.cut = int(cut)
            out.append(Mutant(f"{n}: cut at {cut} of {size}", d, expect="fail"))
    return out


def verdict(m: Mutant, r: dict | None) -> str | None:
    """None when mutant `m`'s result `r` is a clean error or a run as expected, else why not.

    Clean: exit status 0 (a run), 1 or 2 (an error); no traceback, crash or hang; stderr
    printable (no escape codes from the file) in lines of at most MAX_LINE characters; an
    error is one last line 'numoe: error: ...' saying what `m.must_say` asks."""
    if r is None:
        return "no result"
    if r["outcome"] != "exit":
        return r["outcome"]
    rc, err = r["rc"], r["stderr"]
    if rc not in (0, 1, 2):
        return f"exit status {rc}"
    lines = err.strip().splitlines()
    if any(len(line) > MAX_LINE for line in lines):
        return f"a stderr line of {max(len(line) for line in lines)} characters"
    if not all(line.isprintable() for line in lines):
        return f"unprintable stderr: {err[-300:]!a}"
    if rc != 0:
        last = lines[-1] if lines else ""
        if not last.startswith("numoe: error: "):
            return f"exit status {rc} without an error line: {err[-300:]!a}"
        if m.expect == "ok":
            return f"refused: {last}"
        missing = [s for s in m.must_say if s not in last]
        if missing:
            return f"the error does not say {missing}: {last}"
    elif m.expect == "fail":
        return f"ran (should be refused): {r['stdout'][:100]!a}"
    return None


# ---------------------------------------------------------------- the driver


def _run_one(job: dict) -> dict:
    from numoe.cli import main

    argv = [job["mode"], "-m", job["path"], "-n", "2", "-t", "1", "-c", "64", "--seed", "1"]
    if job["mode"] == "run":
        argv += ["-p", "hi"]
    err, out = io.StringIO(), io.StringIO()
    stdin = sys.stdin
    sys.stdin = io.StringIO("hi\n/exit\n")
    outcome = "exit"
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            signal.alarm(job.get("timeout", 20))
            try:
                rc = main(argv)
            except SystemExit as e:  # argparse
                rc = e.code if isinstance(e.code, int) else 1
            finally:
                signal.alarm(0)
    except _Timeout:
        rc, outcome = -1, "timeout"
    except MemoryError:
        rc, outcome = -1, "memory"
    except BaseException as e:  # noqa: BLE001 (what `numoe` would print as a traceback)
        rc, outcome = -1, f"traceback {type(e).__name__}: {str(e)[:300]}"
    finally:
        sys.stdin = stdin
    return {"id": job["id"], "rc": rc, "outcome": outcome, "stderr": err.getvalue()[-4000:],
            "stdout": out.getvalue()[:400]}  # fmt: skip


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def driver(jobs_file: str, start: int) -> None:
    jobs = json.loads(Path(jobs_file).read_text())
    signal.signal(signal.SIGALRM, _alarm)
    # a runaway allocation becomes a MemoryError, not the machine's memory
    limit = 6 << 30
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    import numoe.cli  # (import time out of the first job's alarm)
    import numoe.engine  # noqa: F401
    import numoe.text.chat_template as ct

    ct.TIME_LIMIT = 1.0  # a hanging template costs the fuzz run 1 s, not 5

    for job in jobs[start:]:
        print(json.dumps({"start": job["id"]}), flush=True)
        print(json.dumps(_run_one(job)), flush=True)


def run_all(jobs: list[dict], jobs_file: Path, workers: int = 2, timeout: float = 300) -> dict:
    """Run every job in `workers` driver processes; a job whose driver died (a signal) or
    hung gets outcome "crash rc=..." / "hang", and a new driver takes the jobs after it.
    Returns id -> result."""
    import os
    import subprocess
    import time

    results: dict = {}
    shards = [jobs[i::workers] for i in range(workers)]
    files = []
    for i, shard in enumerate(shards):
        f = jobs_file.with_suffix(f".{i}.json")
        f.write_text(json.dumps(shard))
        files.append(f)
    env = dict(os.environ, PYTHONFAULTHANDLER="")
    running = {i: (0, None) for i in range(len(shards)) if shards[i]}  # shard -> (start, proc)
    deadline = time.monotonic() + timeout
    while running:
        for i, (start, proc) in list(running.items()):
            if proc is None:
                proc = subprocess.Popen([sys.executable, __file__, str(files[i]), str(start)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)  # fmt: skip
                running[i] = (start, proc)
        i, (start, proc) = next(iter(running.items()))
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            hung = False
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            hung = True
        current, done = None, 0
        for line in out.decode().splitlines():
            r = json.loads(line)
            if "start" in r:
                current = r["start"]
            else:
                results[r["id"]] = r
                current, done = None, done + 1
        nxt = start + done
        if current is not None:  # died or hung inside this job
            why = "hang" if hung else f"crash rc={proc.returncode} {err.decode()[-300:]!r}"
            results[current] = {"id": current, "rc": proc.returncode, "outcome": why,
                                "stderr": "", "stdout": ""}  # fmt: skip
            nxt += 1
        elif proc.returncode != 0 and not hung:
            raise RuntimeError(f"fuzz driver failed: {err.decode()[-2000:]}")
        del running[i]
        if nxt < len(shards[i]) and not hung:
            running[i] = (nxt, None)
    return results


if __name__ == "__main__":
    driver(sys.argv[1], int(sys.argv[2]))
