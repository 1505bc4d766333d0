"""A seeded, structure-aware fuzz run over tiny valid models (tests/gguf_fuzz.py).

Mutants change one thing numoe reads (the header, a metadata value's type or range, a
tensor info, a tensor's data to NaN / inf, the chat template, the file's length) in three
tiny files: a qwen3moe with K-quant weights, a DeepSeek-V3-shaped deepseek2 and a
Mixtral-shaped llama. Each runs as `numoe run -m MUTANT -p hi -n 2` (`numoe chat` for the
templates) in a driver process, several per process, a crash or hang isolated to its
mutant; each must end in a clean one-line error (exit status 1 or 2, no traceback, short
printable stderr) or a correct run, and the mutants that must be refused are.
"""

from __future__ import annotations

import collections
import time

from gguf_fuzz import make_bases, mutants, run_all, verdict

SEED = 20251202


def test_fuzz_gguf(tmp_path):
    t0 = time.perf_counter()
    ms = mutants(make_bases(tmp_path), SEED)
    assert len(ms) >= 200
    jobs = []
    for i, m in enumerate(ms):
        p = tmp_path / f"m{i}.gguf"
        p.write_bytes(m.doc.to_bytes())
        jobs.append({"id": i, "path": str(p), "mode": m.mode})
    results = run_all(jobs, tmp_path / "jobs.json", workers=2, timeout=300)
    bad = [(m.name, why) for i, m in enumerate(ms) if (why := verdict(m, results.get(i)))]
    outcomes = collections.Counter(
        "run" if r["rc"] == 0 else "error" for r in results.values() if r["outcome"] == "exit"
    )
    print(f"{len(ms)} mutants, {dict(outcomes)}, {time.perf_counter() - t0:.1f} s")
    assert not bad, f"{len(bad)} of {len(ms)} mutants:\n" + "\n".join(
        f"{name}: {why}" for name, why in bad[:40]
    )
    assert outcomes["run"] >= 6 and outcomes["error"] >= len(ms) // 2
