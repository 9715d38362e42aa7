"""The README's pictures: each is in docs/, is a real picture, and is what the chapters draw."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO, SCRIPT_ENV

Image = pytest.importorskip(
    "PIL.Image", reason="the pictures need the plots extra (matplotlib brings Pillow)"
)
matplotlib = pytest.importorskip("matplotlib", reason="the pictures need the plots extra")

README = (REPO / "README.md").read_text()
PICTURES = re.findall(r"!\[[^\]]+\]\((docs/[^)]+\.png)\)", README)
VERIFIED_MATPLOTLIB = re.search(r"^matplotlib==(\S+)$", (REPO / "constraints.txt").read_text(), re.M).group(1)
ANTI_ALIASING_LEVELS = 16  # of 255: more than this is a different drawing, not a shade
SAME_EVERY_RUN = {"training-curves.png": "train_run", "resume.png": "checkpoint_run"}
same_matplotlib = pytest.mark.skipif(  # torch 2.10 to 2.15 compute the same curves
    matplotlib.__version__ != VERIFIED_MATPLOTLIB,
    reason=f"the committed pictures were drawn by matplotlib {VERIFIED_MATPLOTLIB}; another version "
    "lays out text and lines differently",
)


def assert_drawn_alike(drawn: Path, committed: Path) -> None:
    """The same picture up to anti-aliasing. Another CPU's rounding can move a curve by a fraction
    of a pixel, which shades its edge pixels a few levels differently (at most 3 of 255 seen);
    a changed curve, label or layout changes thousands of pixels by far more."""
    with Image.open(drawn) as new, Image.open(committed) as old:
        assert new.size == old.size
        difference = np.abs(np.asarray(new.convert("RGB"), float) - np.asarray(old.convert("RGB"), float))
    changed = int((difference.max(axis=2) > ANTI_ALIASING_LEVELS).sum())
    pixels = difference[..., 0].size
    assert changed <= pixels // 2000, f"{changed} of {pixels} pixels differ by more than shading"
    rms = float(np.sqrt((difference**2).mean()))
    assert rms < 0.5, f"RMS difference {rms:.3f} of 255"


def test_the_readme_shows_the_three_pictures_the_command_draws():
    sys.path.insert(0, str(REPO / "docs"))
    try:
        from make_pictures import PICTURES as DRAWN
    finally:
        sys.path.remove(str(REPO / "docs"))
    assert sorted(Path(picture).name for picture in PICTURES) == sorted(DRAWN)


@pytest.mark.parametrize("picture", PICTURES)
def test_each_picture_is_a_real_readable_png(picture):
    with Image.open(REPO / picture) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert 800 <= width <= 2000 and 300 <= height <= 1200  # readable on a page, not a thumbnail
        grey = image.convert("L")
        low, high = grey.getextrema()
        assert high - low > 200  # dark lines and text on a light background: not blank
        assert sum(1 for count in grey.histogram() if count) > 20  # many grey levels: a real drawing


@same_matplotlib
@pytest.mark.parametrize("picture", sorted(SAME_EVERY_RUN))
def test_the_committed_picture_is_what_the_chapter_draws_now(picture, request):
    run = request.getfixturevalue(SAME_EVERY_RUN[picture])
    assert_drawn_alike(run.artifacts / picture, REPO / "docs" / picture)


@pytest.mark.slow
@same_matplotlib
def test_the_command_regenerates_the_pictures(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "docs" / "make_pictures.py"), "--into", str(tmp_path)],
        env=SCRIPT_ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(Path(p).name for p in PICTURES)
    for picture in SAME_EVERY_RUN:
        assert_drawn_alike(tmp_path / picture, REPO / "docs" / picture)
