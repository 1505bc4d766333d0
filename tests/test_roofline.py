"""Bytes of weights per decoded token, against a hand count, and their split into routed
experts / other layers / output head."""

from numoe.gguf import open_gguf
from numoe.roofline import bytes_per_token, token_bytes
from numoe.synth import preset_config, synth


def test_bytes_per_token_hand_count_f32(tmp_path):
    path = tmp_path / "m.gguf"
    synth("tiny-qwen3moe", path, "F32", layers=1)
    c = preset_config("tiny-qwen3moe", layers=1)
    D, V, Dh, H, Hkv = c.n_embd, c.n_vocab, c.head_dim, c.n_head, c.n_head_kv
    E, k, F = c.n_expert, c.n_expert_used, c.n_ff_exp
    attn = D * H * Dh * 2 + D * Hkv * Dh * 2 + 2 * Dh  # q, o, k, v, q/k norms
    experts = k * 3 * D * F  # k of E experts: gate, up, down
    router = E * D
    norms = 2 * D + D  # attn_norm, ffn_norm, output_norm
    head = V * D
    embd_row = D
    want = 4 * (attn + experts + router + norms + head + embd_row)  # F32: 4 bytes each
    assert bytes_per_token(open_gguf(path), k, E) == want


def test_bytes_per_token_quantized_uses_stored_sizes(tmp_path):
    f32, q8 = tmp_path / "a.gguf", tmp_path / "b.gguf"
    synth("tiny-qwen3moe", f32, "F32", layers=1)
    synth("tiny-qwen3moe", q8, "Q8_0", layers=1)
    c = preset_config("tiny-qwen3moe", layers=1)
    a = bytes_per_token(open_gguf(f32), c.n_expert_used, c.n_expert)
    b = bytes_per_token(open_gguf(q8), c.n_expert_used, c.n_expert)
    # Q8_0 stores 34 bytes per 32 weights; the routers and 1-D tensors stay F32
    assert 34 / 128 * a < b < 0.5 * a


def test_token_bytes_split_hand_count_f32(tmp_path):
    path = tmp_path / "m.gguf"
    synth("tiny-qwen3moe", path, "F32", layers=2)
    c = preset_config("tiny-qwen3moe", layers=2)
    D, V, Dh, H, Hkv = c.n_embd, c.n_vocab, c.head_dim, c.n_head, c.n_head_kv
    E, k, F = c.n_expert, c.n_expert_used, c.n_ff_exp
    per_layer = D * H * Dh * 2 + D * Hkv * Dh * 2 + 2 * Dh + E * D + 2 * D  # attn, router, norms
    split = token_bytes(open_gguf(path), k, E)
    assert split.n_layer == 2
    assert split.routed == 4 * 2 * k * 3 * D * F  # k of E experts per layer, F32
    assert split.head == 4 * (V * D + D)  # output.weight + output_norm
    assert split.other == 4 * (2 * per_layer + D)  # the blocks' other tensors + one embd row
    assert split.total == bytes_per_token(open_gguf(path), k, E)
    text = split.describe()
    assert "routed experts" in text and "(2 layers)" in text and "output head" in text


def test_token_bytes_tied_head_counts_the_whole_embedding_table(tmp_path):
    """A file without output.weight reads the embedding table as its head (the lookup's one
    row is then part of that read)."""
    src = tmp_path / "m.gguf"
    synth("tiny-qwen3moe", src, "F32", layers=1)
    g = open_gguf(src)
    c = preset_config("tiny-qwen3moe", layers=1)
    untied = token_bytes(g, c.n_expert_used, c.n_expert)
    del g.tensors["output.weight"]  # as a tied file has it
    tied = token_bytes(g, c.n_expert_used, c.n_expert)
    embd = g.tensors["token_embd.weight"].nbytes
    assert tied.routed == untied.routed
    assert tied.head == embd + 4 * c.n_embd  # the table + output_norm
    assert tied.other == untied.other - embd // c.n_vocab  # no separate row
