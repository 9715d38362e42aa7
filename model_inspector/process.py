"""The process's way out: quick, and quiet on every torch."""

from __future__ import annotations

import gc
import sys


def skip_final_collection() -> None:
    """Freeze the collector at exit, where that is quiet.

    At exit, Python's collector walks every object torch and its compiler left behind: about
    half a second to a second of CPU for nothing. Frozen objects are skipped, and files are
    still flushed and closed. But an extension built with nanobind (triton's, which PyPI's
    torch 2.15 wheels bring) counts its objects that were never freed, and prints some 30
    lines about "leaked" instances on stderr: where one is loaded, the collector runs."""
    if not nanobind_loaded():
        gc.freeze()


def nanobind_loaded() -> bool:
    """True if an extension module built with nanobind has been imported.

    nanobind's functions and classes are of types it defines in a module named `nanobind`
    (`nb_func`, `nb_type_0`, ...)."""
    for module in list(sys.modules.values()):
        if str(getattr(module, "__file__", "")).endswith((".so", ".pyd")) and any(
            type(value).__module__ == "nanobind" for value in list(vars(module).values())
        ):
            return True
    return False
