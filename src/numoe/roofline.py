"""Decode is bound by memory bandwidth: the bytes of weights one token reads.

Per token, decode reads every dense weight once (attention, dense FFNs, shared experts,
norms, the output head), one row of the embedding table, and the k routed experts it was
sent to in each MoE layer, all at their stored (quantized) sizes. Achieved bandwidth =
bytes_per_token x tokens/s; comparing it with the machine's read bandwidth says how close
a run is to the limit.
"""

from __future__ import annotations

from .gguf import GGUFFile


def is_routed_expert(name: str) -> bool:
    """Merged 'blk.N.ffn_up_exps.weight' or per-expert 'blk.N.ffn_up.E.weight' (old Mixtral)."""
    parts = name.split(".")
    return "_exps" in name or (len(parts) == 5 and parts[3].isdigit())


def bytes_per_token(g: GGUFFile, n_expert_used: int, n_expert: int) -> int:
    """Weight bytes one decoded token reads (the KV cache is not counted)."""
    total = 0.0
    for name, t in g.tensors.items():
        if name.startswith("token_embd."):
            # the lookup reads one row; a tied output head reads the whole table
            total += t.nbytes if not g.has("output.weight") else t.nbytes / t.shape[0]
        elif is_routed_expert(name):
            total += t.nbytes * n_expert_used / n_expert
        else:
            total += t.nbytes
    return int(total)
