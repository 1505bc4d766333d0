"""Every SIMD level as a test parameter: a level the run cannot use is a skip that says why,
never a missing case.

`ISA_PARAMS` is what `@pytest.mark.parametrize("isa", ISA_PARAMS)` takes: scalar, avx2 and
avx512 always, each skipped (with the reason, `pytest -rs`) when this CPU lacks it or when
NUMOE_ISA caps the run below it: NUMOE_ISA=avx2 on an AVX-512 machine runs the suite as an
AVX2-only CPU would (the kernels start at avx2, the avx512 cases show as skips).
"""

from __future__ import annotations

import os

import pytest

from numoe import _cpu

ALL_ISAS = ("scalar", "avx2", "avx512")  # numoe's levels, lowest first


def isa_skip_reason(isa: str) -> str | None:
    """Why the tests cannot run `isa` here, or None when they can."""
    have = _cpu.isa_available()
    if isa not in have:
        return f"this CPU lacks {isa} (numoe._cpu.isa_available(): {', '.join(have)})"
    cap = os.environ.get("NUMOE_ISA", "")
    if cap in ALL_ISAS and ALL_ISAS.index(isa) > ALL_ISAS.index(cap):
        return f"NUMOE_ISA={cap}: run as on a CPU without {isa}"
    return None


def _param(isa: str):
    reason = isa_skip_reason(isa)
    return pytest.param(
        isa, id=isa, marks=pytest.mark.skipif(reason is not None, reason=reason or "")
    )


ISA_PARAMS = [_param(isa) for isa in ALL_ISAS]
