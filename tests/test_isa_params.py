"""isa_params: every SIMD level is a test case, skipped with the reason where it cannot run."""

import isa_params
from isa_params import ALL_ISAS, ISA_PARAMS, isa_skip_reason


def test_every_level_is_a_parameter():
    assert [p.values[0] for p in ISA_PARAMS] == list(ALL_ISAS) == ["scalar", "avx2", "avx512"]
    for p in ISA_PARAMS:
        (mark,) = p.marks
        assert mark.name == "skipif"
        assert mark.args == (isa_skip_reason(p.values[0]) is not None,)


def test_skip_reasons(monkeypatch):
    monkeypatch.delenv("NUMOE_ISA", raising=False)
    monkeypatch.setattr(isa_params._cpu, "isa_available", lambda: ["scalar", "avx2"])
    assert isa_skip_reason("scalar") is None and isa_skip_reason("avx2") is None
    assert isa_skip_reason("avx512").startswith("this CPU lacks avx512")
    monkeypatch.setattr(isa_params._cpu, "isa_available", lambda: ["scalar", "avx2", "avx512"])
    assert isa_skip_reason("avx512") is None
    monkeypatch.setenv("NUMOE_ISA", "avx2")  # stands in for a CPU without AVX-512
    assert isa_skip_reason("avx2") is None
    assert isa_skip_reason("avx512") == "NUMOE_ISA=avx2: run as on a CPU without avx512"
    monkeypatch.setenv("NUMOE_ISA", "scalar")
    assert "without avx2" in isa_skip_reason("avx2")
