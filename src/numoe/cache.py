"""Preallocated key/value caches. Allocated once per session; nothing grows per token."""

from __future__ import annotations

import torch


class ContextFull(RuntimeError):
    """The prompt plus generated tokens do not fit in the context (-c)."""


class _Cache:
    n_ctx: int
    _numpy: list | None = None

    def check(self, pos: int, n: int) -> None:
        if pos + n > self.n_ctx:
            raise ContextFull(
                f"context full: {pos + n} tokens needed, {self.n_ctx} allocated (raise -c)"
            )

    def _tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def numpy_layer(self, layer: int):
        """The cache's two tensors of `layer` as writable numpy views when they are float32
        on the CPU (the C++ decode ops store into them), else None. Made once per cache:
        building views between weight streams costs more than the attention itself."""
        if self._numpy is None:
            a, b = self._tensors()
            cpu = a.device.type == "cpu" and a.dtype == b.dtype == torch.float32
            self._numpy = [(x.numpy(), y.numpy()) for x, y in zip(a, b)] if cpu else []
        return self._numpy[layer] if self._numpy else None


class KVCache(_Cache):
    """Per layer: k [n_ctx, H_kv, D_k], v [n_ctx, H_kv, D_v]."""

    def __init__(self, n_layer, n_ctx, n_head_kv, d_k, d_v, device, dtype=torch.float32):
        self.n_ctx = n_ctx
        self.k = torch.zeros(n_layer, n_ctx, n_head_kv, d_k, device=device, dtype=dtype)
        self.v = torch.zeros(n_layer, n_ctx, n_head_kv, d_v, device=device, dtype=dtype)

    def _tensors(self):
        return self.k, self.v

    def update(self, layer: int, pos: int, k: torch.Tensor, v: torch.Tensor):
        """Store k [T, H_kv, D_k], v [T, H_kv, D_v] at pos; return views of 0..pos+T."""
        T = k.shape[0]
        self.check(pos, T)
        self.k[layer, pos : pos + T] = k
        self.v[layer, pos : pos + T] = v
        return self.k[layer, : pos + T], self.v[layer, : pos + T]


class MLACache(_Cache):
    """Multi-head latent attention: per layer the compressed latent [n_ctx, kv_lora_rank]
    and the shared rope key [n_ctx, d_rope], not per-head K/V."""

    def __init__(self, n_layer, n_ctx, kv_lora_rank, d_rope, device, dtype=torch.float32):
        self.n_ctx = n_ctx
        self.latent = torch.zeros(n_layer, n_ctx, kv_lora_rank, device=device, dtype=dtype)
        self.k_rope = torch.zeros(n_layer, n_ctx, d_rope, device=device, dtype=dtype)

    def _tensors(self):
        return self.latent, self.k_rope

    def update(self, layer: int, pos: int, latent: torch.Tensor, k_rope: torch.Tensor):
        """Store latent [T, R], k_rope [T, D_rope] at pos; return views of 0..pos+T."""
        T = latent.shape[0]
        self.check(pos, T)
        self.latent[layer, pos : pos + T] = latent
        self.k_rope[layer, pos : pos + T] = k_rope
        return self.latent[layer, : pos + T], self.k_rope[layer, : pos + T]
