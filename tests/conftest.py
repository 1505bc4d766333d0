"""Every test runs without the user's config file or NUMOE_* thread settings."""

import pytest

from numoe.config import SETTINGS


@pytest.fixture(autouse=True)
def _no_user_settings(tmp_path_factory, monkeypatch):
    path = tmp_path_factory.getbasetemp() / "no-config.toml"
    monkeypatch.setenv("NUMOE_CONFIG", str(path))
    for s in SETTINGS.values():
        monkeypatch.delenv(s.env, raising=False)
    yield
    path.unlink(missing_ok=True)  # a test that wrote the config (tune) leaves none behind


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A tiny DeepSeek-V2-shaped model (MLA, a dense layer, shared experts), Q4_K_M mix."""
    from numoe.synth import synth

    path = tmp_path_factory.mktemp("tiny") / "tiny-v2-q4_k_m.gguf"
    synth("tiny-v2", path, "Q4_K_M")
    return str(path)
