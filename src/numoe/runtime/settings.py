"""`Runtime`: the run settings, resolved once and passed down.

A `Runtime` holds what the flags, ``NUMOE_*`` variables and the config file decided about
how a model runs: the thread plan (``numa.ThreadPlan``), the NUMA policy for the routed
experts (``numa.NumaPolicy``), the placement of the dense layers (``placement.Placement``),
the SIMD level of the kernels and torch's thread counts. ``numoe.models.load`` takes one and
hands it to the model; the model gives the layers what they need of it (a device, the NUMA
policy) and applies it to the process (`activate`) at the start of each forward.

Two things it applies are the process's, not the model's: the C++ pool (its workers are the
machine's cores) and the kernels' SIMD level. `activate` sets them only where they differ,
so several models or sessions in one process each run with their own settings; models
sharing one runtime share them at no cost.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import _cpu
from ..placement import Placement
from . import pool
from .numa import NumaPolicy, ThreadPlan, plan_threads, resolve_policy
from .topology import Topology


@dataclass(frozen=True)
class Runtime:
    plan: ThreadPlan  # the pool's CPUs, one group per logical NUMA node
    policy: NumaPolicy  # where the routed experts live: shard | replicate | off
    placement: Placement  # the device of attention, dense layers, shared experts, head
    isa: str  # SIMD level of the kernels: scalar | avx2 | avx512
    torch_threads_decode: int = 1  # torch intra-op threads in a one-token forward
    torch_threads_prefill: int | None = None  # ... in a longer one (None: the pool's count)

    def __post_init__(self):
        for name in ("torch_threads_decode", "torch_threads_prefill"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")

    @classmethod
    def create(
        cls,
        threads: int | None = None,
        numa_nodes: list[int] | None = None,
        smt: bool = False,
        numa: str = "auto",
        device: str = "cpu",
        isa: str | None = None,
        topology: Topology | None = None,
        **torch_threads,
    ) -> Runtime:
        """From settings as the CLI resolves them: -t, --numa-nodes (ids), --smt, --numa,
        --device; isa None = the level numoe chose at start-up (the CPU's best, or NUMOE_ISA).
        PlanError for a node list this machine cannot honour, DeviceError for a bad device."""
        topo = topology if topology is not None else Topology.read()
        plan = plan_threads(topo, threads, numa_nodes, smt)
        return cls(
            plan=plan,
            policy=resolve_policy(numa, plan),
            placement=Placement.parse(device),
            isa=isa if isa is not None else _cpu.isa(),
            **torch_threads,
        )

    @property
    def threads(self) -> int:
        return self.plan.threads

    def activate(self, n_tokens: int = 1) -> None:
        """Make the process run as this runtime says, for a forward over n_tokens: the pool's
        CPUs, the kernels' SIMD level, torch's threads and the pool's spin for the phase
        (decode: torch on one thread, workers spinning through the Python gaps; prefill:
        torch on the pool's count for its attention matmuls). Cheap when nothing changes."""
        n = pool.apply(self.plan.groups)
        if _cpu.isa() != self.isa:
            _cpu.set_isa(self.isa)
        if n_tokens <= 1:
            pool.apply_torch_threads(self.torch_threads_decode, "decode")
        else:
            pool.apply_torch_threads(self.torch_threads_prefill or n, "prefill")

    def __str__(self) -> str:
        return (
            f"{self.threads} thread{'s' if self.threads != 1 else ''}, NUMA {self.policy.name}, "
            f"{self.placement}, {self.isa}"
        )
