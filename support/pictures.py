"""Pictures, where matplotlib is installed: one line saying how to get it where not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support.cli import in_notebook

PLOTS_INSTALL = 'pip install -c constraints.txt ".[plots]"'


def import_pyplot(picture: Path) -> Any:
    """matplotlib.pyplot, or None after one line saying where `picture` would be and how to get it.

    Run as a script, figures go to files only (no window); in a notebook they also show inline.
    """
    try:
        import matplotlib
    except ImportError:
        print(f"(No picture: {picture} needs matplotlib. To draw it: {PLOTS_INSTALL})")
        return None
    if not in_notebook():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
