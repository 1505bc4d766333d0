"""Decode is bound by memory bandwidth: the bytes of weights one token reads, and the
machine's read bandwidth to compare them with.

Per token, decode reads every dense weight once (attention, dense FFNs, shared experts,
norms, routers, the output head), one row of the embedding table, and the k routed experts
it was sent to in each MoE layer, all at their stored (quantized) sizes: for the routed
experts that is layers x hidden x moe_intermediate x k x (bytes of a gate + up + down
element), as KTransformers' users count it. Achieved bandwidth = bytes_per_token x tokens/s;
``numoe.runtime.bandwidth.read_bandwidth`` (a ~1 s probe, cached per machine) says how close
that is to the limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from .gguf import GGUFFile


def is_routed_expert(name: str) -> bool:
    """Merged 'blk.N.ffn_up_exps.weight' or per-expert 'blk.N.ffn_up.E.weight' (old Mixtral)."""
    parts = name.split(".")
    return "_exps" in name or (len(parts) == 5 and parts[3].isdigit())


@dataclass(frozen=True)
class TokenBytes:
    """Weight bytes one decoded token reads, split three ways (they sum to `total`, which is
    `bytes_per_token`):

    - routed: the k of E routed experts of every MoE layer (gate, up, down);
    - other: every other tensor of the blocks (attention, norms, routers, dense FFNs, shared
      experts) and the one row of the embedding table the lookup reads;
    - head: the output head (output.weight, or the whole embedding table when it is tied)
      and the final norm.

    n_layer: the blocks in the file (GGUF {arch}.block_count, else the blk.N tensors)."""

    routed: int
    other: int
    head: int
    n_layer: int

    @property
    def total(self) -> int:
        return self.routed + self.other + self.head

    def describe(self) -> str:
        """'312.5 MB/token: routed experts 250.0 + other layers 40.0 + output head 22.5
        (12 layers)' (MB = 1e6 bytes)."""
        return (
            f"{self.total / 1e6:.1f} MB/token: routed experts {self.routed / 1e6:.1f} + other "
            f"layers {self.other / 1e6:.1f} + output head {self.head / 1e6:.1f} "
            f"({self.n_layer} layers)"
        )


def _n_layer(g: GGUFFile) -> int:
    n = g.arch_get("block_count", None) if hasattr(g, "arch_get") else None
    if n is None:
        blocks = {name.split(".")[1] for name in g.tensors if name.startswith("blk.")}
        n = len(blocks)
    return int(n)


def token_bytes(g: GGUFFile, n_expert_used: int, n_expert: int) -> TokenBytes:
    """Weight bytes one decoded token reads, split into routed experts / other layers /
    output head (the KV cache is not counted); see TokenBytes."""
    routed = other = head = 0.0
    tied = not g.has("output.weight")
    for name, t in g.tensors.items():
        if name.startswith("token_embd."):
            # the lookup reads one row; a tied output head reads the whole table
            if tied:
                head += t.nbytes
            else:
                other += t.nbytes / t.shape[0]
        elif name.startswith(("output.", "output_norm.")):
            head += t.nbytes
        elif is_routed_expert(name):
            routed += t.nbytes * n_expert_used / n_expert
        else:
            other += t.nbytes
    total = int(routed + other + head)  # as bytes_per_token always counted it
    r, h = int(routed), int(head)
    return TokenBytes(routed=r, other=total - r - h, head=h, n_layer=_n_layer(g))


def bytes_per_token(g: GGUFFile, n_expert_used: int, n_expert: int) -> int:
    """Weight bytes one decoded token reads (the KV cache is not counted): the total of
    `token_bytes`."""
    return token_bytes(g, n_expert_used, n_expert).total


def n_params(g: GGUFFile, n_expert_used: int, n_expert: int) -> tuple[int, int]:
    """(total, active per token) weights: active counts k of the E routed experts and every
    other tensor in full (the embedding table too, as model cards count 'A3B')."""
    total = routed = 0
    for name, t in g.tensors.items():
        total += t.n_elements
        if is_routed_expert(name):
            routed += t.n_elements
    idle = routed - routed * n_expert_used // n_expert if n_expert else 0
    return total, total - idle
