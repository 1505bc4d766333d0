"""numoe serve's HTTP layer in-process (Starlette's TestClient) on a real tiny model: bad
requests answered 4xx with OpenAI's error shape, the API key, /health while loading."""

from __future__ import annotations

import copy
import json

import pytest
from starlette.testclient import TestClient

from numoe.gguf import open_gguf
from numoe.models import load
from numoe.serve import ServeConfig, Server, create_app
from numoe.text import Tokenizer

KEY = "s3cret"


@pytest.fixture(scope="module")
def loaded(tiny_model):
    g = open_gguf(tiny_model)
    _, model = load(g)
    return model, Tokenizer.from_gguf(g)


@pytest.fixture(scope="module")
def client(loaded):
    server = Server(ServeConfig(model_id="tiny", n_slots=2, n_ctx=128, api_key=KEY,
                                max_body=4096))  # fmt: skip
    server.attach(*loaded)
    with TestClient(create_app(server)) as c:
        c.headers["Authorization"] = f"Bearer {KEY}"
        yield c
    server.stop()


CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hi"}]


def chat(**kw):
    return {"messages": MSG, "max_tokens": 2, **kw}


# (path, body: dict or raw bytes, status, param named in the error or None)
BAD = [
    (CHAT, b"{not json", 400, None),
    (CHAT, b"[1, 2]", 400, None),
    (CHAT, b"\xff\xfe", 400, None),
    (CHAT, {"max_tokens": 2}, 400, "messages"),
    (CHAT, {"messages": []}, 400, "messages"),
    (CHAT, {"messages": "hi"}, 400, "messages"),
    (CHAT, {"messages": ["hi"]}, 400, "messages[0]"),
    (CHAT, {"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
    (CHAT, {"messages": [{"content": "x"}]}, 400, "messages[0].role"),
    (CHAT, {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    (
        CHAT,
        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        400,
        "messages[0].content",
    ),
    (CHAT, chat(max_tokens=-1), 400, "max_tokens"),
    (CHAT, chat(max_tokens=0), 400, "max_tokens"),
    (CHAT, chat(max_tokens="10"), 400, "max_tokens"),
    (CHAT, chat(max_completion_tokens=1.5), 400, "max_completion_tokens"),
    (CHAT, chat(temperature="hot"), 400, "temperature"),
    (CHAT, chat(temperature=-1), 400, "temperature"),
    (CHAT, chat(top_p=2), 400, "top_p"),
    (CHAT, chat(top_k=-5), 400, "top_k"),
    (CHAT, chat(min_p=True), 400, "min_p"),
    (CHAT, chat(frequency_penalty=3), 400, "frequency_penalty"),
    (CHAT, chat(seed=1.5), 400, "seed"),
    (CHAT, chat(n=2), 400, "n"),
    (CHAT, chat(stop=5), 400, "stop"),
    (CHAT, chat(stop=["a", 1]), 400, "stop"),
    (CHAT, chat(stop=["x"] * 17), 400, "stop"),
    (CHAT, chat(stream="yes"), 400, "stream"),
    (CHAT, chat(stream_options=[1]), 400, "stream_options"),
    (CHAT, chat(top_logprobs=3), 400, "top_logprobs"),
    (CHAT, chat(logprobs=True, top_logprobs=50), 400, "top_logprobs"),
    (CHAT, chat(model=7), 400, "model"),
    (CHAT, chat(model="gpt-4"), 404, "model"),
    (CHAT, chat(chat_template_kwargs=[1]), 400, "chat_template_kwargs"),
    (CHAT, {"messages": [{"role": "user", "content": "word " * 200}]}, 400, "messages"),
    (CHAT, {"messages": [{"role": "user", "content": "x" * 5000}]}, 413, None),
    ("/v1/completions", {"max_tokens": 2}, 400, "prompt"),
    ("/v1/completions", {"prompt": 5}, 400, "prompt"),
    ("/v1/completions", {"prompt": [1, 99999]}, 400, "prompt"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "prompt"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 21}, 400, "logprobs"),
    ("/v1/nothing", {}, 404, None),
]


@pytest.mark.parametrize("path,body,status,param", BAD)
def test_bad_request_is_4xx_with_openai_error(client, path, body, status, param):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = client.post(path, content=data, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    assert err["param"] == param
    assert len(err["message"]) < 600


def test_wrong_method_and_keys(client):
    r = client.get(CHAT)
    assert r.status_code == 405 and r.json()["error"]["message"]
    for auth in (None, "Bearer wrong", "Basic " + KEY, f"Bearer {KEY}x"):
        headers = {"Authorization": auth} if auth else {}
        c = TestClient(client.app)
        r = c.post(CHAT, json=chat(), headers=headers)
        assert r.status_code == 401, auth
        assert r.json()["error"]["type"] == "authentication_error"
        assert TestClient(client.app).get("/v1/models").status_code == 401
    assert TestClient(client.app).get("/health").status_code == 200  # no key needed


def test_huge_max_tokens_is_capped_by_the_context(client):
    r = client.post(CHAT, json=chat(max_tokens=10**9, temperature=0, ignore_eos=True))
    assert r.status_code == 200, r.text
    u = r.json()["usage"]
    assert u["prompt_tokens"] + u["completion_tokens"] == 128  # -c 128: to the last position
    assert r.json()["choices"][0]["finish_reason"] == "length"


def test_template_that_fails_is_400(loaded):
    model, tok = loaded
    bad_tok = copy.copy(tok)
    bad_tok.chat_template = "{{ raise_exception('no system role') }}"
    server = Server(ServeConfig(model_id="tiny", n_slots=1, n_ctx=64))
    server.attach(model, bad_tok)
    try:
        r = TestClient(create_app(server)).post(CHAT, json=chat())
        assert r.status_code == 400
        assert "no system role" in r.json()["error"]["message"]
    finally:
        server.stop()


def test_health_is_503_while_loading_then_200(loaded):
    server = Server(ServeConfig(model_id="tiny", n_slots=1, n_ctx=64))
    c = TestClient(create_app(server))
    r = c.get("/health")
    assert r.status_code == 503 and r.json()["status"] == "loading"
    r = c.post(CHAT, json=chat())
    assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
    server.attach(*loaded)
    try:
        assert c.get("/health").status_code == 200
        assert c.post(CHAT, json=chat()).status_code == 200
    finally:
        server.stop()


def test_failed_load_is_reported(loaded):
    server = Server(ServeConfig(model_id="tiny"))

    def boom():
        raise ValueError("model.gguf: tensor 'x' has type 99")

    server.load_in_background(boom).join()
    r = TestClient(create_app(server)).get("/health")
    assert r.status_code == 500 and "type 99" in r.json()["message"]


def test_ollama_endpoints(client):
    tags = client.get("/api/tags").json()["models"]
    assert [m["name"] for m in tags] == ["tiny"]
    body = {"model": "tiny:latest", "messages": MSG, "stream": False,
            "options": {"temperature": 0, "num_predict": 5}}  # fmt: skip
    r = client.post("/api/chat", json=body)
    assert r.status_code == 200, r.text
    whole = r.json()
    assert whole["done"] is True and whole["eval_count"] <= 5
    with client.stream("POST", "/api/chat", json={**body, "stream": True}) as s:
        lines = [json.loads(x) for x in s.iter_lines() if x]
    assert lines[-1]["done"] is True
    assert "".join(x["message"]["content"] for x in lines) == whole["message"]["content"]
    r = client.post("/api/generate", json={"model": "tiny", "prompt": "Hello", "stream": False,
                                           "options": {"num_predict": 3}})  # fmt: skip
    assert r.status_code == 200 and isinstance(r.json()["response"], str)
    r = client.post("/api/generate", json={"model": "tiny", "prompt": 5})
    assert r.status_code == 400 and "prompt" in r.json()["error"]


def test_full_queue_is_429_with_retry_after(loaded):
    from numoe.sampling import Sampler, SamplingParams
    from numoe.serve.scheduler import Job

    server = Server(ServeConfig(model_id="tiny", n_slots=1, n_ctx=4096, max_queue=0))
    server.attach(*loaded)
    events = []
    busy = Job(prompt=[1, 2, 3], max_tokens=4000, sampler=Sampler(SamplingParams(seed=0)),
               emit=events.append, ignore_eos=True)  # fmt: skip
    try:
        server.scheduler.submit(busy)
        r = TestClient(create_app(server)).post(CHAT, json=chat())
        assert r.status_code == 429, r.text
        assert r.headers["Retry-After"] and r.json()["error"]["type"] == "rate_limit_error"
        server.scheduler.cancel(busy)
    finally:
        server.stop()
    assert events[-1].kind == "done" and events[-1].finish_reason == "abort"
