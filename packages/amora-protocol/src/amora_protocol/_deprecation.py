"""Deprecating a Python API: a warning that says since when, until when, and what to use.

Every Amora distribution depends on this package, so they all deprecate the same way. The
policy (see the README, "Compatibility"): a public name is deprecated in a minor release,
keeps working with an `AmoraDeprecationWarning` for at least one more minor release, and is
removed in the release the warning names, never earlier.
"""

from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["AmoraDeprecationWarning", "deprecated", "deprecated_names", "warn_deprecated"]

F = TypeVar("F", bound="Callable[..., Any]")


class AmoraDeprecationWarning(DeprecationWarning):
    """A deprecated Amora API was used; the message says which, since when, and the removal.

    Attributes:
        name: The deprecated name (``amora_sync.AmoraClient.old_method``).
        since: The release that deprecated it.
        removed_in: The release that removes it.
        use: What to use instead, if anything.
    """

    def __init__(self, name: str, *, since: str, removed_in: str, use: str | None = None) -> None:
        """Build the warning and its message from its parts."""
        self.name = name
        self.since = since
        self.removed_in = removed_in
        self.use = use
        text = f"{name} is deprecated since {since} and will be removed in {removed_in}"
        super().__init__(f"{text}; use {use} instead" if use else text)


def warn_deprecated(name: str, *, since: str, removed_in: str, use: str | None = None, stacklevel: int = 2) -> None:
    """Warn that ``name`` is deprecated (``stacklevel`` 2 points at the caller of the caller)."""
    warnings.warn(AmoraDeprecationWarning(name, since=since, removed_in=removed_in, use=use), stacklevel=stacklevel + 1)


def deprecated(*, since: str, removed_in: str, use: str | None = None) -> Callable[[F], F]:
    """Decorate a function or method so that each call warns, naming the removal release.

    The docstring gains a ``Deprecated`` note so the reference documentation says it too.
    """

    def decorate(func: F) -> F:
        name = f"{func.__module__}.{func.__qualname__}"

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401 - passes through whatever func returns
            warn_deprecated(name, since=since, removed_in=removed_in, use=use)
            return func(*args, **kwargs)

        note = f"Deprecated since {since}, removed in {removed_in}" + (f": use {use}." if use else ".")
        wrapper.__doc__ = f"{func.__doc__ or ''}\n\n{note}".strip()
        return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature

    return decorate


def deprecated_names(module: str, renamed: Mapping[str, tuple[object, str, str, str]]) -> Callable[[str], object]:
    """A module ``__getattr__`` that serves old names with a warning.

    Args:
        module: The module's ``__name__``.
        renamed: Old name -> (the object, its new name, since, removed_in).

    Returns:
        The function to assign to the module's ``__getattr__``; unknown names raise
        ``AttributeError`` as usual.
    """

    def __getattr__(name: str) -> object:  # noqa: N807 - the module hook is called this
        if name in renamed:
            value, new_name, since, removed_in = renamed[name]
            warn_deprecated(f"{module}.{name}", since=since, removed_in=removed_in, use=f"{module}.{new_name}")
            return value
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
