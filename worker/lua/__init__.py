"""Lua scripts shared by units that may not import each other, and the one way every
unit of the worker reads its scripts.

Each script is a file: a unit's own steps live in its ``scripts/`` folder (loaded with
:func:`script`), and a step more than one unit runs lives here, beside this module.
This unit imports nothing of the worker, so every layer may use it.
"""

from __future__ import annotations

from importlib import resources
from typing import Final


def script(package: str, name: str) -> str:
    """The text of ``scripts/<name>`` in ``package`` (e.g. ``"worker.api"``)."""
    return resources.files(package).joinpath("scripts", name).read_text(encoding="utf-8")


#: ``compare_and_delete.lua``: DEL KEYS[1] only while it holds ARGV[1] (1 deleted, 0 not).
COMPARE_AND_DELETE_LUA: Final = (
    resources.files("worker.lua").joinpath("compare_and_delete.lua").read_text(encoding="utf-8")
)

__all__ = ["COMPARE_AND_DELETE_LUA", "script"]
