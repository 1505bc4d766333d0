"""A real `numoe serve` process on a tiny model, driven by the `openai` client: chat and
completions, streamed and not, usage, stop strings, seeds, concurrent requests equal to
the same requests alone (batch invariance), a client that disconnects, prompt reuse."""

from __future__ import annotations

import concurrent.futures as cf
import json
import signal
import time
import urllib.request

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_fixtures import metric, server_process


@pytest.fixture(scope="module")
def served(tiny_model):
    with server_process(tiny_model, "-np", "8", "-c", "256", "--chunk", "16") as (p, url):
        yield p, url


@pytest.fixture()
def client(served):
    return openai.OpenAI(base_url=served[1] + "/v1", api_key="none", max_retries=0, timeout=120)


def metrics(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics") as r:
        return r.read().decode()


def greedy(**kw):
    return {"temperature": 0, "extra_body": {"ignore_eos": True}, **kw}


M = "tiny-v2-q4_k_m"
MSGS = [{"role": "user", "content": "Tell me about the experts."}]


def test_models_and_metrics_parse(client, served):
    ids = [m.id for m in client.models.list().data]
    assert ids == [M]
    fams = {f.name for f in text_string_to_metric_families(metrics(served[1]))}
    for name in ("numoe_requests_running", "numoe_time_to_first_token_seconds",
                 "numoe_inter_token_latency_seconds", "numoe_kv_slots_used",
                 "numoe_prompt_tokens", "numoe_generation_tokens"):  # fmt: skip
        assert name in fams


def test_chat_streamed_equals_not_streamed(client):
    r = client.chat.completions.create(model=M, messages=MSGS, max_tokens=12,
                                       **greedy())  # fmt: skip
    text = r.choices[0].message.content
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12
    chunks = list(client.chat.completions.create(
        model=M, messages=MSGS, max_tokens=12, stream=True,
        stream_options={"include_usage": True}, **greedy()))  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["length"]
    assert chunks[-1].usage.completion_tokens == 12 and not chunks[-1].choices


def test_completions_and_logprobs(client):
    r = client.completions.create(model=M, prompt="The experts live in",
                                  max_tokens=6, logprobs=3, **greedy())  # fmt: skip
    c = r.choices[0]
    assert len(c.logprobs.tokens) == 6 and len(c.logprobs.top_logprobs[0]) == 3
    # greedy: the chosen token is the most likely one
    for tok, lp, top in zip(c.logprobs.tokens, c.logprobs.token_logprobs, c.logprobs.top_logprobs):
        assert lp <= 0 and abs(max(top.values()) - lp) < 1e-5
    s = list(client.completions.create(model=M, prompt="The experts live in",
                                       max_tokens=6, stream=True, **greedy()))  # fmt: skip
    assert "".join(x.choices[0].text for x in s) == c.text


def test_stop_string_never_leaks(client):
    full = (
        client.completions.create(model=M, prompt="Once upon", max_tokens=40, **greedy())
        .choices[0]
        .text
    )
    assert len(full) > 12
    for stop in (full[5:9], full[10:11], full[-6:]):
        want = full[: full.index(stop)]
        r = client.completions.create(model=M, prompt="Once upon", max_tokens=40, stop=[stop, "\x00zz"],
                                      **greedy())  # fmt: skip
        assert r.choices[0].text == want and r.choices[0].finish_reason == "stop"
        s = client.completions.create(model=M, prompt="Once upon", max_tokens=40, stop=stop, stream=True,
                                      **greedy())  # fmt: skip
        assert "".join(x.choices[0].text for x in s) == want


def test_seed_reproducible(client):
    def run(seed):
        return client.chat.completions.create(
            model=M, messages=MSGS, max_tokens=16, temperature=1.5, seed=seed,
            extra_body={"top_k": 0, "top_p": 1.0, "min_p": 0.0, "ignore_eos": True},
        ).choices[0].message.content  # fmt: skip

    a, b, c = run(7), run(7), run(8)
    assert a == b and a != c


def _stream_tokens(client, prompt, n):
    s = client.completions.create(
        model=M, prompt=prompt, max_tokens=n, stream=True, logprobs=0, **greedy()
    )
    return [
        tok for x in s for tok in (x.choices[0].logprobs.tokens if x.choices[0].logprobs else [])
    ]


def test_concurrent_requests_equal_alone(client, served):
    prompts = [
        (f"Request {i}: " + "the experts live in RAM " * (i % 4 + 1), 8 + 5 * i) for i in range(8)
    ]
    alone = [_stream_tokens(client, p, n) for p, n in prompts]
    with cf.ThreadPoolExecutor(8) as ex:
        together = list(ex.map(lambda pn: _stream_tokens(client, *pn), prompts))
    for (p, n), a, t in zip(prompts, alone, together):
        assert len(a) == n
        assert a == t, p
    m = metrics(served[1])
    assert metric(m, "numoe_requests_running") == 0


def test_disconnect_frees_the_slot(client, served):
    url = served[1]
    with cf.ThreadPoolExecutor(3) as ex:
        others = [ex.submit(_stream_tokens, client, f"Other {i}", 40) for i in range(2)]
        body = json.dumps({"prompt": "Leaving early", "max_tokens": 200, "stream": True,
                           "temperature": 0, "ignore_eos": True}).encode()  # fmt: skip
        req = urllib.request.Request(url + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req) as r:
            for _ in range(3):
                assert r.readline()
        # closed mid-stream: the scheduler drops it at the next step
        assert [len(f.result()) for f in others] == [40, 40]
    deadline = time.monotonic() + 20
    while metric(metrics(url), "numoe_requests_running") != 0:
        assert time.monotonic() < deadline, "the disconnected request still runs"
        time.sleep(0.1)
    assert 'finish_reason="abort"' in metrics(url)


def test_second_chat_turn_prefills_only_new_tokens(client, served):
    url = served[1]
    msgs = [{"role": "user", "content": "A first question about memory bandwidth."}]
    r1 = client.chat.completions.create(model=M, messages=msgs, max_tokens=10,
                                        **greedy())  # fmt: skip
    before = metric(metrics(url), "numoe_prefill_tokens_total")
    msgs += [{"role": "assistant", "content": r1.choices[0].message.content},
             {"role": "user", "content": "And a second one."}]  # fmt: skip
    r2 = client.chat.completions.create(model=M, messages=msgs, max_tokens=4,
                                        **greedy())  # fmt: skip
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert cached >= r1.usage.prompt_tokens
    computed = metric(metrics(url), "numoe_prefill_tokens_total") - before
    assert computed == r2.usage.prompt_tokens - cached


def test_sigterm_ends_streams_and_exits(tiny_model):
    with server_process(tiny_model, "-np", "2", "-c", "2048") as (p, url):
        body = json.dumps({"prompt": "Long", "max_tokens": 2000, "stream": True,
                           "temperature": 0, "ignore_eos": True}).encode()  # fmt: skip
        req = urllib.request.Request(url + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.readline()
            t0 = time.monotonic()
            p.send_signal(signal.SIGTERM)
            rest = r.read().decode()  # the stream ends (an error event, then [DONE])
        assert rest.rstrip().endswith("data: [DONE]") and "shutting down" in rest
        assert p.wait(15) in (0, -signal.SIGTERM)  # uvicorn re-raises it once shut down
        assert time.monotonic() - t0 < 10


def test_non_streamed_client_that_leaves_is_dropped(tiny_model):
    """A non-streamed request whose client closes the connection is cancelled (its handler
    only waits, so a watcher notices the disconnect), freeing the slot long before its
    4,000 tokens would be done."""
    import socket

    with server_process(tiny_model, "-np", "1", "-c", "4096") as (_, url):
        host, port = url.removeprefix("http://").split(":")
        body = json.dumps({"prompt": "Leaving", "max_tokens": 4000, "temperature": 0,
                           "ignore_eos": True}).encode()  # fmt: skip
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                      b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)  # fmt: skip
            deadline = time.monotonic() + 20
            while metric(metrics(url), "numoe_requests_running") == 0:  # it has started
                assert time.monotonic() < deadline
                time.sleep(0.01)
        t0 = time.monotonic()
        while metric(metrics(url), "numoe_requests_running") != 0:
            assert time.monotonic() - t0 < 5, "the abandoned request still runs"
            time.sleep(0.05)
        m = metrics(url)
        assert 'numoe_requests_total{finish_reason="abort"} 1.0' in m
        assert metric(m, "numoe_generation_tokens_total") < 4000
