"""Pictures, where matplotlib is installed: one line saying how to get it where not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support.cli import fail, in_notebook

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


def save_figure(fig: Any, path: Path) -> None:
    """Write `fig` as a PNG (one line on failure); show it too when running in a notebook."""
    try:
        fig.savefig(path, dpi=110)
    except OSError as err:
        path.unlink(missing_ok=True)  # no half-written picture
        fail(f"cannot write {path}: {err.strerror or err}")
    print(f"Drew {path}")
    if in_notebook():
        import matplotlib.pyplot as plt

        plt.show()
    else:
        import matplotlib.pyplot as plt

        plt.close(fig)
