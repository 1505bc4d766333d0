"""Served throughput and latency: numoe serve beside llama.cpp's llama-server, same GGUF, same
threads, same machine, in alternating turns.

    python benchmarks/serve.py -m q3-12L.gguf -t 2 --llama-server /path/to/llama-server
    python benchmarks/serve.py -m q3-12L.gguf --clients 1,2,4,8 --prompt 128 --gen 64 -r 2

llama-server builds from the llama.cpp source that llama-cpp-python's sdist vendors:
    pip download --no-deps --no-binary :all: llama-cpp-python && tar xzf llama_cpp_python-*.tar.gz
    cd llama_cpp_python-*/vendor/llama.cpp && cmake -B build -DGGML_NATIVE=ON \\
        -DLLAMA_BUILD_SERVER=ON -DLLAMA_CURL=OFF && cmake --build build --target llama-server -j

Both servers start once (-np = the largest client count, -c = --ctx per slot) and stay up;
the one not taking its turn is stopped (SIGSTOP) so its threads stay off the cores. Every
request is a streamed /v1/completions of a token-id prompt (distinct per client, so nothing
is reused unless a test means it), greedy, ignore_eos, max_tokens --gen.

Tests, per round, each engine in turn (rotated order):
- N concurrent clients, one request each: aggregate output tok/s (generated tokens / wall
  time of the batch, prefill included), decode tok/s (the tokens of all clients while every
  one is generating, from the last first token to the first last token, over that window:
  the steady batched rate), time to first token (TTFT) and inter-token latency (ITL) p50/p99;
- prompt reuse: a 1,000-token prompt, then the same plus 24 new tokens (a chat's second
  turn): TTFT of the second beside the same-length prompt cold (a distinct first token);
- a long prompt arriving: 4 streams decoding, a 2,000-token prompt sent among them: the
  streams' ITL p50 and p99 over that time.
The load generator runs at nice 10 (the servers at the caller's priority), so on a small
machine its own CPU time comes out of idle time rather than the servers' steps.
Figures are medians over rounds; ratios numoe / llama-server per round, median.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request


def peer_version(binary: str) -> str:
    """llama-server's `--version` line ('version: 0.5.0-dev (build 1, commit ...)')."""
    p = subprocess.run([binary, "--version"], check=False, capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    lines = [x for x in (p.stdout + p.stderr).splitlines() if x.startswith("version")]
    return lines[0] if lines else "unknown version"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(url: str, proc, limit=900.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url}: not healthy after {limit:.0f} s")


class Engine:
    def __init__(self, name: str, cmd: list[str], port: int):
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(f"/tmp/serve-bench-{name}.log", "w")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        wait_health(self.url, self.proc)
        self.pause()

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)
        time.sleep(0.3)

    def close(self):
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def stream(url: str, prompt: list[int], gen: int, out: dict) -> None:
    """One streamed completion; out gets t0, token arrival times, n (usage)."""
    host, port = url.removeprefix("http://").split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=600)
    body = {"prompt": prompt, "max_tokens": gen, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}  # fmt: skip
    out["t0"] = time.perf_counter()
    c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    times, n, first = [], None, None
    for line in r:
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            continue
        first = first or time.perf_counter()
        d = json.loads(line[6:])
        if d.get("usage"):
            n = d["usage"]["completion_tokens"]
        if d.get("choices") and d["choices"][0].get("finish_reason") is None:
            times.append(time.perf_counter())  # a token (its text may be empty: a control token)
    out["times"], out["n"] = times, n if n is not None else len(times)
    out["first"] = first if first is not None else time.perf_counter()
    c.close()


def run_clients(url: str, prompts: list[list[int]], gen: int, delays=None) -> list[dict]:
    outs = [{} for _ in prompts]
    delays = delays or [0.0] * len(prompts)

    def go(i):
        time.sleep(delays[i])
        stream(url, prompts[i], gen, outs[i])

    ts = [threading.Thread(target=go, args=(i,)) for i in range(len(prompts))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return outs


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def concurrency(url: str, n: int, plen: int, gen: int, vocab: int, rng) -> dict:
    prompts = [[rng.randrange(10, vocab) for _ in range(plen)] for _ in range(n)]
    t0 = time.perf_counter()
    outs = run_clients(url, prompts, gen)
    wall = time.perf_counter() - t0
    ttft = [o["first"] - o["t0"] for o in outs]
    itl = [b - a for o in outs for a, b in zip(o["times"], o["times"][1:])]
    # decode tok/s: tokens of all clients while every one of them is generating (from the
    # last first token to the first last token), over that window: the steady batched rate
    lo = max(o["times"][0] for o in outs if o["times"])
    hi = min(o["times"][-1] for o in outs if o["times"])
    n_win = sum(1 for o in outs for t in o["times"] if lo < t <= hi)
    dec = n_win / (hi - lo) if hi > lo else float("nan")
    return {"tok_s": sum(o["n"] for o in outs) / wall, "decode_tok_s": dec,
            "ttft_p50": pct(ttft, 0.5), "ttft_p99": pct(ttft, 0.99),
            "itl_p50": pct(itl, 0.5), "itl_p99": pct(itl, 0.99)}  # fmt: skip


def reuse(url: str, vocab: int, rng) -> dict:
    base = [rng.randrange(10, vocab) for _ in range(1000)]
    turn2 = base + [rng.randrange(10, vocab) for _ in range(24)]
    run_clients(url, [base], 4)
    warm = run_clients(url, [turn2], 1)[0]
    cold_prompt = [rng.randrange(10, vocab)] + turn2[1:]  # the same length, nothing shared
    cold = run_clients(url, [cold_prompt], 1)[0]
    tw, tc = warm["first"] - warm["t0"], cold["first"] - cold["t0"]
    return {"ttft_warm": tw, "ttft_cold": tc, "warm_over_cold": tw / tc}


def long_prompt(url: str, vocab: int, rng, gen: int) -> dict:
    prompts = [[rng.randrange(10, vocab) for _ in range(32)] for _ in range(4)]
    big = [rng.randrange(10, vocab) for _ in range(2000)]
    outs = [{} for _ in range(5)]
    ts = [
        threading.Thread(target=stream, args=(url, p, gen, outs[i])) for i, p in enumerate(prompts)
    ]
    for t in ts:
        t.start()
    time.sleep(1.0)
    tb = threading.Thread(target=stream, args=(url, big, 1, outs[4]))
    tb.start()
    for t in [*ts, tb]:
        t.join()
    end = outs[4]["first"]
    start = outs[4]["t0"]
    itl = [
        b - a
        for o in outs[:4]
        for a, b in zip(o["times"], o["times"][1:])
        if b >= start and a <= end
    ]
    itl_all = [b - a for o in outs[:4] for a, b in zip(o["times"], o["times"][1:])]
    return {"itl_p50": pct(itl_all, 0.5), "itl_p99_during": pct(itl, 0.99),
            "p99_over_p50": pct(itl, 0.99) / pct(itl_all, 0.5), "prompt_s": end - start}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count())
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens per client")
    ap.add_argument("--gen", type=int, default=64, help="generated tokens per client")
    ap.add_argument("--ctx", type=int, default=4096, help="context per slot")
    ap.add_argument("-r", "--rounds", type=int, default=2)
    ap.add_argument("--llama-server", default=None, help="llama-server binary (optional)")
    ap.add_argument("--skip", default="", help="tests to skip: reuse,long")
    a = ap.parse_args()
    clients = [int(x) for x in a.clients.split(",")]
    npar = max(max(clients), 4)
    from numoe.bench import isa_line
    from numoe.gguf import open_gguf
    from numoe.text import Tokenizer

    vocab = Tokenizer.from_gguf(open_gguf(a.model)).n_vocab
    engines = [Engine("numoe", [sys.executable, "-m", "numoe", "serve", "-m", a.model, "-t",
                                str(a.threads), "-np", str(npar), "-c", str(a.ctx),
                                "--port", str(p := free_port())], p)]  # fmt: skip
    if a.llama_server:
        p = free_port()
        engines.append(Engine("llama-server", [a.llama_server, "-m", a.model, "-t", str(a.threads),
                                               "-tb", str(a.threads), "-np", str(npar),
                                               "-c", str(a.ctx * npar), "--port", str(p),
                                               "--host", "127.0.0.1", "--no-webui"], p))  # fmt: skip
    # the load generator shares the machine: below the servers, so it takes what they leave
    os.nice(10)
    print(f"# serve benchmark: {os.path.basename(a.model)}, {a.threads} threads, prompt "
          f"{a.prompt}, gen {a.gen}, -np {npar}, {a.rounds} rounds", flush=True)  # fmt: skip
    print(f"# {isa_line()}", flush=True)
    if a.llama_server:
        print(f"# llama-server: {peer_version(a.llama_server)}", flush=True)
    res: dict = {}
    rng = random.Random(0)
    try:
        for r in range(a.rounds):
            order = engines[r % len(engines) :] + engines[: r % len(engines)]
            for e in order:
                e.resume()
                for n in clients:
                    res.setdefault((e.name, f"c{n}"), []).append(
                        concurrency(e.url, n, a.prompt, a.gen, vocab, rng)
                    )
                if "reuse" not in a.skip:
                    res.setdefault((e.name, "reuse"), []).append(reuse(e.url, vocab, rng))
                if "long" not in a.skip:
                    res.setdefault((e.name, "long"), []).append(long_prompt(e.url, vocab, rng, 96))
                e.pause()
                print(f"  round {r + 1}: {e.name} done", file=sys.stderr, flush=True)
    finally:
        for e in engines:
            e.close()

    def med(name, test, key):
        v = [x[key] for x in res.get((name, test), [])]
        return statistics.median(v) if v else float("nan")

    names = [e.name for e in engines]
    print(
        "\n| clients | engine | output tok/s | decode tok/s | TTFT p50 / p99 (s) | ITL p50 / p99 (ms) |"
    )
    print("|---:|---|---:|---:|---|---|")
    for n in clients:
        for name in names:
            t = f"c{n}"
            print(f"| {n} | {name} | {med(name, t, 'tok_s'):.2f} | {med(name, t, 'decode_tok_s'):.2f} | "
                  f"{med(name, t, 'ttft_p50'):.2f} / {med(name, t, 'ttft_p99'):.2f} | "
                  f"{1e3 * med(name, t, 'itl_p50'):.0f} / {1e3 * med(name, t, 'itl_p99'):.0f} |")  # fmt: skip
    print()
    for name in names:
        one = med(name, "c1", "decode_tok_s")
        for n in clients[1:]:
            print(
                f"{name}: decode at {n} streams / 1 stream = {med(name, f'c{n}', 'decode_tok_s') / one:.2f}x"
            )
    if len(names) > 1:
        for n in clients:
            ratios = [x["decode_tok_s"] / y["decode_tok_s"]
                      for x, y in zip(res[("numoe", f"c{n}")], res[("llama-server", f"c{n}")])]  # fmt: skip
            print(f"numoe / llama-server decode at {n} streams: median {statistics.median(ratios):.2f}x "
                  f"(rounds {', '.join(f'{x:.2f}' for x in ratios)})")  # fmt: skip
    for name in names:
        if (name, "reuse") in res:
            print(f"{name}: prompt reuse TTFT warm {med(name, 'reuse', 'ttft_warm'):.3f} s, cold "
                  f"{med(name, 'reuse', 'ttft_cold'):.3f} s: {100 * med(name, 'reuse', 'warm_over_cold'):.0f} %")  # fmt: skip
        if (name, "long") in res:
            print(f"{name}: 2,000-token prompt among 4 streams: ITL p50 {1e3 * med(name, 'long', 'itl_p50'):.0f} ms, "
                  f"p99 during {1e3 * med(name, 'long', 'itl_p99_during'):.0f} ms = "
                  f"{med(name, 'long', 'p99_over_p50'):.1f}x p50; prompt took {med(name, 'long', 'prompt_s'):.1f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
