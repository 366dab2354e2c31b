"""Shared test set-up: hypothesis settings and the vector generator.

Hypothesis: no per-example deadline, no slowness check on a shared 2-core CI machine;
generation speed depends on what else the machine runs, what the property tests check does not.
"""

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, settings

VECTORS_DIR = Path(__file__).resolve().parent.parent / "vectors"

settings.register_profile("amora", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("amora")


@pytest.fixture(scope="session")
def vector_generator() -> ModuleType:
    """``vectors/generate.py`` as a module (its helper modules sit next to it, not in a package)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(VECTORS_DIR))
        spec = importlib.util.spec_from_file_location("amora_vectors_generate", VECTORS_DIR / "generate.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module
