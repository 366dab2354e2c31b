"""Deprecated Python APIs warn, naming the release that deprecated them and the one that removes them."""

from __future__ import annotations

import types
import warnings

import pytest

import amora_protocol as ap


@ap.deprecated(since="0.2.0", removed_in="0.4.0", use="new_total()")
def old_total(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def test_a_deprecated_function_warns_and_still_works():
    with pytest.warns(ap.AmoraDeprecationWarning) as caught:
        assert old_total(2, 3) == 5
    warning = caught[0].message
    assert isinstance(warning, ap.AmoraDeprecationWarning)
    assert isinstance(warning, DeprecationWarning)  # so -W error::DeprecationWarning catches it
    assert (warning.since, warning.removed_in, warning.use) == ("0.2.0", "0.4.0", "new_total()")
    # The qualified name depends on how pytest imported this file; the rest is fixed.
    assert str(warning).endswith(
        "old_total is deprecated since 0.2.0 and will be removed in 0.4.0; use new_total() instead"
    )
    assert caught[0].filename == __file__  # points at the caller, not at the decorator
    assert old_total.__doc__ is not None
    assert "Deprecated since 0.2.0, removed in 0.4.0: use new_total()." in old_total.__doc__


def test_a_renamed_module_attribute_is_served_with_a_warning():
    module = types.ModuleType("amora_example")
    module.NewName = object()  # type: ignore[attr-defined]
    module.__getattr__ = ap.deprecated_names(  # type: ignore[method-assign]
        "amora_example",
        {"OldName": (module.NewName, "NewName", "0.2.0", "0.3.0")},
    )
    with pytest.warns(
        ap.AmoraDeprecationWarning,
        match=r"amora_example\.OldName is deprecated since 0\.2\.0 and will"
        r" be removed in 0\.3\.0; use amora_example\.NewName instead",
    ):
        assert module.OldName is module.NewName
    with pytest.raises(AttributeError, match="no attribute 'Missing'"):
        _ = module.Missing


def test_the_test_suite_turns_deprecation_warnings_into_errors():
    # pytest runs with filterwarnings = error: our own code cannot use a deprecated API unnoticed.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ap.AmoraDeprecationWarning):
            old_total(1, 1)
