"""The one interface every dense matmul with a stored weight goes through.

On the CPU a `Linear` keeps the GGUF tensor's raw bytes (a view into the file's memory
map) and runs numoe's quantized C++ op (``numoe._cpu.Linear``): no float copy of the
weight is ever made. On a CUDA device the weight is dequantized to float32 on the device.
`Embedding` does the same for token embeddings: on the CPU only the looked-up rows are
dequantized.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType

from .. import _cpu
from ..gguf import SUPPORTED_TYPES, GGUFError, GGUFFile, TensorInfo, dequantize


def load_weight(
    g: GGUFFile, name: str, shape: tuple[int, ...], device: torch.device
) -> torch.Tensor:
    """Dequantized float32 copy of one tensor, checked against the expected shape.

    For small tensors only (norms, biases, gates): matmul weights go through `Linear`.
    Leading unit dimensions are ignored ([1, D] matches (D,)), as llama.cpp does."""
    return dequantize(_tensor(g, name, shape)).reshape(shape).to(device)


def _tensor(g: GGUFFile, name: str, shape: tuple[int, ...]) -> TensorInfo:
    t = g.tensor(name)
    if _strip_ones(t.shape) != _strip_ones(shape):
        g.tensor(name, shape)  # raises the standard wrong-shape error
    return t


def _strip_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    i = 0
    while i < len(shape) - 1 and shape[i] == 1:
        i += 1
    return tuple(shape[i:])


def raw_bytes(t: TensorInfo) -> np.ndarray:
    """The tensor's bytes as a flat uint8 view into the memmap (never a copy)."""
    if t.qtype not in SUPPORTED_TYPES:
        raise GGUFError(f"tensor '{t.name}' has type {t.qtype.name}, which numoe does not support")
    flat = t.data.reshape(-1)
    if not np.shares_memory(flat, t.data):  # reshape copied: the view was not contiguous
        raise GGUFError(f"tensor '{t.name}': bytes are not contiguous")
    return flat


def cpu_f32(*ts: torch.Tensor | None) -> bool:
    """Whether numoe's C++ float ops may take these tensors (None: an absent optional one):
    float32 on the CPU, last dimension contiguous, and no autograd to keep."""
    grad = torch.is_grad_enabled()
    return all(
        t is None
        or (
            t.device.type == "cpu"
            and t.dtype == torch.float32
            and (t.dim() == 0 or t.stride(-1) == 1)
            and not (grad and t.requires_grad)
        )
        for t in ts
    )


def cpu_ops(*lins) -> bool:
    """Whether every one of these layers runs a CPU C++ op with no bias to add (None: an
    absent optional one): what a C++ decode block (models/base.py) can take as it is."""
    return all(
        lin is None or (getattr(lin, "op", None) is not None and getattr(lin, "bias", None) is None)
        for lin in lins
    )


def f32_numpy(t: torch.Tensor | None) -> np.ndarray | None:
    """A float32 CPU tensor as a contiguous numpy array for a C++ op to keep (None stays
    None); the caller checked it with `cpu_f32`."""
    return None if t is None else t.detach().contiguous().numpy()


def as_numpy(x: torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 CPU numpy view of x (copies only when it must)."""
    if x.dtype == torch.float32 and x.device.type == "cpu" and x.is_contiguous():
        return x.detach().numpy()
    return x.detach().to("cpu", torch.float32).contiguous().numpy()


class Linear:
    """y = x @ W.T (+ b). W is [out, in] as stored in GGUF (numpy order).

    With ``groups`` = G, W is [G, out, in] and x [..., G, in] -> y [..., G, out] (one matrix
    per group, e.g. per attention head)."""

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        op: _cpu.Linear | None = None,
    ):
        if (weight is None) == (op is None):
            raise ValueError("Linear needs a float weight or a CPU op")
        self.weight = weight  # [out, in] or [G, out, in] float, or None on the CPU path
        self.op = op  # numoe._cpu.Linear over the raw GGUF bytes, or None
        self.bias = bias  # [out] or None
        if op is not None:
            self.groups, self.n_out, self.n_in = op.groups, op.n_out, op.n_in
        elif weight.dim() == 3:
            self.groups, self.n_out, self.n_in = weight.shape
        else:
            self.groups, (self.n_out, self.n_in) = 1, weight.shape

    @classmethod
    def from_tensor(
        cls, t: TensorInfo, n_out: int, n_in: int, device: torch.device, groups: int = 1
    ) -> Linear:
        """W from a tensor already checked to be [groups, n_out, n_in] (or [n_out, n_in])."""
        if torch.device(device).type == "cpu":
            return cls(op=_cpu.Linear(raw_bytes(t), int(t.qtype), n_out, n_in, groups))
        shape = (groups, n_out, n_in) if groups > 1 else (n_out, n_in)
        return cls(dequantize(t).reshape(shape).to(device))

    @classmethod
    def from_float(cls, w: torch.Tensor) -> Linear:
        """W [out, in] or [groups, out, in] computed on load (not stored in the file), on w's
        device; on the CPU an F32 op over a contiguous copy (the op keeps it)."""
        if w.device.type != "cpu":
            return cls(w.contiguous())
        w = w.detach().float().contiguous()
        shape = (1, *w.shape) if w.dim() == 2 else w.shape
        raw = w.numpy().reshape(-1).view(np.uint8)
        return cls(op=_cpu.Linear(raw, int(GGMLQuantizationType.F32), shape[1], shape[2], shape[0]))

    @classmethod
    def load(
        cls,
        g: GGUFFile,
        name: str,
        n_out: int,
        n_in: int,
        device: torch.device,
        bias: bool = False,
        groups: int = 1,
    ) -> Linear:
        """Load '<name>.weight' [n_out, n_in] (or [groups, n_out, n_in]) and, if asked,
        '<name>.bias' [n_out]."""
        shape = (groups, n_out, n_in) if groups > 1 else (n_out, n_in)
        lin = cls.from_tensor(_tensor(g, f"{name}.weight", shape), n_out, n_in, device, groups)
        if bias:
            lin.bias = load_weight(g, f"{name}.bias", (n_out,), device)
        return lin

    @property
    def shape(self) -> tuple[int, ...]:
        if self.groups > 1:
            return (self.groups, self.n_out, self.n_in)
        return (self.n_out, self.n_in)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """[..., in] -> [..., out]; with groups, [..., G, in] -> [..., G, out]."""
        G = self.groups
        flat = x.dim() == 2 and G == 1  # [T, in] -> [T, out]: no reshapes (decode: ~75 calls/token)
        if self.op is not None:
            x2 = as_numpy(x if flat else x.reshape(-1, G * self.n_in))  # [T, G*in]
            y = torch.from_numpy(self.op.forward(x2))  # [T, G*out] on the CPU
            if x.device.type != "cpu":
                y = y.to(x.device)
        elif G > 1:
            xg = x.reshape(-1, G, self.n_in).transpose(0, 1)  # [G, T, in]
            y = torch.matmul(xg, self.weight.transpose(1, 2)).transpose(0, 1)  # [T, G, out]
        else:
            y = x.reshape(-1, self.n_in) @ self.weight.T
        if not flat:
            lead = x.shape[:-2] if G > 1 else x.shape[:-1]
            y = y.reshape(*lead, *((G,) if G > 1 else ()), self.n_out)
        if self.bias is not None:
            y = y + self.bias
        return y


def linear_many(lins: list[Linear], x: torch.Tensor) -> list[torch.Tensor]:
    """[lin(x) for lin in lins] for x [T, in]: when every one is a CPU op without groups
    (e.g. an attention's q, k and v), x is quantized once and all their rows share one pool
    call (a decode step saves a pool wake-up and a tail per extra matrix)."""
    if len(lins) < 2 or x.dim() != 2 or any(lin.op is None or lin.groups != 1 for lin in lins):
        return [lin(x) for lin in lins]
    ys = _cpu.Linear.forward_many([lin.op for lin in lins], as_numpy(x))  # [T, out_i] each
    out = []
    for lin, y in zip(lins, ys):
        y = torch.from_numpy(y)
        if x.device.type != "cpu":
            y = y.to(x.device)
        out.append(y if lin.bias is None else y + lin.bias)
    return out


class Embedding:
    """Token ids -> rows of the embedding matrix [V, D].

    On the CPU the matrix stays raw in the memmap and only the looked-up rows are
    dequantized; on a CUDA device it is one float32 tensor there."""

    def __init__(self, t: TensorInfo, n_vocab: int, n_embd: int, device: torch.device):
        self.device = torch.device(device)
        self.n_vocab, self.n_embd = n_vocab, n_embd
        self.tensor = t
        if self.device.type == "cpu":
            self.op = _cpu.Linear(raw_bytes(t), int(t.qtype), n_vocab, n_embd)
            self.weight = None
        else:
            self.op = None
            self.weight = dequantize(t).reshape(n_vocab, n_embd).to(self.device)

    @classmethod
    def load(
        cls, g: GGUFFile, name: str, n_vocab: int, n_embd: int, device: torch.device
    ) -> Embedding:
        return cls(_tensor(g, name, (n_vocab, n_embd)), n_vocab, n_embd, device)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:  # [T] -> [T, D]
        if self.op is None:
            return self.weight[tokens.to(self.device)]
        ids = tokens.detach().to("cpu", torch.int64).contiguous().reshape(-1).numpy()
        rows = torch.from_numpy(self.op.rows(ids))  # [T, D]
        return rows.reshape(*tokens.shape, self.n_embd)

    def as_linear(self) -> Linear:
        """The output head of a model with tied embeddings: logits = x @ E.T."""
        if self.op is not None:
            return Linear(op=self.op)
        return Linear(self.weight)
