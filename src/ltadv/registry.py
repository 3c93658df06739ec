"""Registries: one plain dict per extensible axis (methods, models, attacks, augmentations, datasets).

The CLI choices, the README tables and the parametrised tests all read these dicts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def register(table: dict[str, Any], name: str) -> Callable[[Any], Any]:
    """Decorator: ``@register(METHODS, "at_bsl")`` puts the object into ``table`` under ``name``."""

    def deco(obj: Any) -> Any:
        if name in table:
            raise KeyError(f"{name!r} is registered twice")
        table[name] = obj
        return obj

    return deco


def lookup(table: dict[str, Any], name: str, kind: str) -> Any:
    """``table[name]`` or a ValueError naming the unknown key and the known ones."""
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(table))}")
    return table[name]
