"""Load a file the unsafe way, in a throwaway process: what a hostile file can do.

    python -I fresh_process/unsafe_load.py pickle FILE
    python -I fresh_process/unsafe_load.py torch FILE

`pickle.load` and `torch.load(..., weights_only=False)` call whatever functions the file
names. Chapter 7 runs this on a harmless hostile file that it has just written into a
private folder; the file's code creates a marker file, and nothing else.
"""

import gc
import pickle
import sys

how, path = sys.argv[1:3]
if how == "pickle":
    with open(path, "rb") as f:  # noqa: PTH123 -- the plain calls a reader would write
        loaded = pickle.load(f)  # runs the file's code
elif how == "torch":
    import torch

    loaded = torch.load(path, weights_only=False)  # runs the file's code too
else:
    sys.exit(f"unknown loader {how!r}: use pickle or torch")
print(f"loaded a {type(loaded).__name__}")
gc.freeze()  # at exit, skip the collector's walk over torch's objects: about a second of CPU
