"""Key/value caches whose memory grows with the tokens they hold, up to n_ctx positions.

A cache starts with room for GROW positions (or n_ctx, if less) and grows by doubling (in
whole GROW steps, at most n_ctx), copying what it holds: a server's slot of `-c 32768` that
holds a 300-token chat takes 512 positions of memory, not 32768. `reserve(n)` makes room for
positions 0..n-1 (a forward calls it before it stores anything); past n_ctx it raises
ContextFull. The C++ decode blocks store into numpy views of the tensors (`numpy_layer`),
made again after each growth.

Reusing a prefix needs nothing from the cache: a step stores its tokens at their positions
and attends to positions 0..pos only, so what lies past a kept prefix is simply overwritten.
`truncate(n)` gives back the memory past the growth step holding n positions (a slot taken
by a shorter conversation).

Each tensor has its own element type, named as llama.cpp's -ctk / -ctv name them
(CACHE_TYPES): "f16" (the default, as llama.cpp's: half the memory and half the attention's
cache reads) or "f32". An F16 cache stores each value rounded to nearest even (IEEE
binary16, as ggml's FP32 -> FP16, numpy's astype(float16) and torch's copy into a half
tensor) and its readers compute in float32 from the exact upcast (the C++ attention converts
rows as it reads them; the torch path upcasts the views `update` returns).
"""

from __future__ import annotations

import torch

from .errors import ContextFull  # defined there (no torch), raised and imported from here

GROW = 256  # positions: the first allocation and the unit of growth

# Cache element types by llama.cpp's -ctk / -ctv names (bf16, q8_0 ...: not yet).
CACHE_TYPES: dict[str, torch.dtype] = {"f32": torch.float32, "f16": torch.float16}
DEFAULT_CACHE_TYPE = "f16"  # llama.cpp's default for K and V


def cache_dtype(name: str) -> torch.dtype:
    """The torch dtype of a cache type name ('f16', 'f32'); ValueError listing the choices."""
    if name not in CACHE_TYPES:
        raise ValueError(f"unknown KV cache type {name!r}: choose from {', '.join(CACHE_TYPES)}")
    return CACHE_TYPES[name]


class _Cache:
    n_ctx: int
    _numpy: list | None = None
    _names: tuple[str, str]  # the two tensors, [n_layer, capacity, ...] each

    def _init(self, n_ctx: int, shapes, device, types: tuple[str, str]) -> None:
        """shapes: the two tensors' per-position shapes; types: their CACHE_TYPES names; room
        for min(n_ctx, GROW) positions at first."""
        if n_ctx < 1:
            raise ValueError(f"a cache needs n_ctx >= 1, got {n_ctx}")
        self._dtypes = tuple(cache_dtype(t) for t in types)
        self.types = tuple(types)  # the two tensors' type names, as the flags give them
        self.n_ctx, self._shapes, self._device = n_ctx, shapes, device
        self._alloc(min(n_ctx, GROW), keep=0)

    @property
    def capacity(self) -> int:
        """Positions the cache has memory for now (grows up to n_ctx)."""
        return getattr(self, self._names[0]).shape[1]

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, n).nbytes for n in self._names)

    def _alloc(self, cap: int, keep: int) -> None:
        """New tensors of `cap` positions holding the old ones' first `keep` positions."""
        for name, shape, dtype in zip(self._names, self._shapes, self._dtypes):
            t = torch.zeros(shape[0], cap, *shape[1:], device=self._device, dtype=dtype)
            if keep:
                t[:, :keep] = getattr(self, name)[:, :keep]
            setattr(self, name, t)
        self._numpy = None  # views of the old tensors: made again on use

    def check(self, pos: int, n: int) -> None:
        if pos + n > self.n_ctx:
            raise ContextFull(
                f"context full: {pos + n} tokens needed, {self.n_ctx} allocated (raise -c)"
            )

    def reserve(self, n: int) -> None:
        """Room for positions 0..n-1: ContextFull past n_ctx; else grows (doubling, in whole
        GROW steps, at most n_ctx) when n exceeds the capacity, keeping what the cache holds."""
        self.check(0, n)
        cap = self.capacity
        if n <= cap:
            return
        want = max(n, 2 * cap)
        self._alloc(min(self.n_ctx, -(-want // GROW) * GROW), keep=cap)

    def truncate(self, n: int) -> None:
        """Keep positions 0..n-1 and give back the memory past the growth step holding them
        (the positions past n would be overwritten anyway)."""
        cap = min(self.n_ctx, max(GROW, -(-n // GROW) * GROW))
        if cap < self.capacity:
            self._alloc(cap, keep=min(n, cap))

    def _tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, self._names[0]), getattr(self, self._names[1])

    def numpy_layer(self, layer: int):
        """The cache's two tensors of `layer` as writable numpy views (float32 or float16
        each) when they are on the CPU (the C++ decode ops store into them), else None. Made
        once per cache and growth: building views between weight streams costs more than
        the attention itself."""
        if self._numpy is None:
            a, b = self._tensors()
            cpu = a.device.type == "cpu"
            self._numpy = [(x.numpy(), y.numpy()) for x, y in zip(a, b)] if cpu else []
        return self._numpy[layer] if self._numpy else None


class KVCache(_Cache):
    """Per layer: k [capacity, H_kv, D_k] of type_k, v [capacity, H_kv, D_v] of type_v."""

    _names = ("k", "v")

    def __init__(
        self, n_layer, n_ctx, n_head_kv, d_k, d_v, device,
        type_k: str = DEFAULT_CACHE_TYPE, type_v: str = DEFAULT_CACHE_TYPE,
    ):  # fmt: skip
        shapes = ((n_layer, n_head_kv, d_k), (n_layer, n_head_kv, d_v))
        self._init(n_ctx, shapes, device, (type_k, type_v))

    def update(self, layer: int, pos: int, k: torch.Tensor, v: torch.Tensor):
        """Store k [T, H_kv, D_k], v [T, H_kv, D_v] at pos (rounded to the cache's types);
        return views of 0..pos+T, in the cache's types (a reader upcasts F16)."""
        T = k.shape[0]
        self.reserve(pos + T)
        self.k[layer, pos : pos + T] = k
        self.v[layer, pos : pos + T] = v
        return self.k[layer, : pos + T], self.v[layer, : pos + T]


class MLACache(_Cache):
    """Multi-head latent attention: per layer the compressed latent [capacity, kv_lora_rank]
    and the shared rope key [capacity, d_rope], not per-head K/V.

    Both are the key ([latent, k_rope]; the latent is the value too), so both take type_k,
    as llama.cpp's MLA cache does (its K cache holds them and V is a view of K's latent: -ctv
    does not apply to MLA models); the types may also be given one per tensor."""

    _names = ("latent", "k_rope")

    def __init__(
        self, n_layer, n_ctx, kv_lora_rank, d_rope, device,
        type_latent: str = DEFAULT_CACHE_TYPE, type_k_rope: str = DEFAULT_CACHE_TYPE,
    ):  # fmt: skip
        shapes = ((n_layer, kv_lora_rank), (n_layer, d_rope))
        self._init(n_ctx, shapes, device, (type_latent, type_k_rope))

    def update(self, layer: int, pos: int, latent: torch.Tensor, k_rope: torch.Tensor):
        """Store latent [T, R], k_rope [T, D_rope] at pos (rounded to the cache's types);
        return views of 0..pos+T, in the cache's types (a reader upcasts F16)."""
        T = latent.shape[0]
        self.reserve(pos + T)
        self.latent[layer, pos : pos + T] = latent
        self.k_rope[layer, pos : pos + T] = k_rope
        return self.latent[layer, : pos + T], self.k_rope[layer, : pos + T]
