"""Where each part of a model runs. The only module that parses device strings.

Routed experts always live in system RAM and run on the CPU (that is numoe's premise);
attention, norms, dense FFNs, shared experts, embeddings and the output head run on the
"dense" device: the CPU, or one CUDA GPU when asked for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

_DEVICE_RE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


class DeviceError(ValueError):
    """A device string that numoe cannot use; the message says why and what is valid."""


def parse_device(spec: str) -> torch.device:
    """'cpu', 'cuda' or 'cuda:N' -> torch.device, checked against what this machine has.

    CUDA_VISIBLE_DEVICES is honoured by torch itself: 'cuda:0' is the first visible GPU.
    """
    s = spec.strip().lower()
    m = _DEVICE_RE.match(s)
    if not m:
        raise DeviceError(f"bad device '{spec}': use cpu, cuda or cuda:N")
    kind, index = m.group(1), m.group(2)
    if kind == "cpu":
        if index not in (None, "0"):
            raise DeviceError(f"bad device '{spec}': the CPU has no index (use cpu)")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device '{spec}' asked for, but this torch build sees no CUDA GPU "
            f"(torch {torch.__version__}); use --device cpu"
        )
    n = torch.cuda.device_count()
    i = int(index) if index is not None else 0
    if i >= n:
        raise DeviceError(
            f"device '{spec}' does not exist: {n} CUDA device(s) visible "
            "(CUDA_VISIBLE_DEVICES renumbers them from 0)"
        )
    return torch.device("cuda", i)


@dataclass(frozen=True)
class Placement:
    """dense: attention/norms/dense FFN/shared experts/embeddings/head; experts: routed."""

    dense: torch.device
    experts: torch.device

    @classmethod
    def parse(cls, device: str = "cpu") -> Placement:
        return cls(dense=parse_device(device), experts=torch.device("cpu"))

    def __str__(self) -> str:
        return f"dense={self.dense} experts={self.experts}"
