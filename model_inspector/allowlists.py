"""What libraries themselves allow `torch.load(weights_only=True)` to import, for their own files.

`weights_only=True` refuses every global outside torch's list. A few libraries load files
they wrote with a few more names allowed, with `torch.serialization.safe_globals` or
`add_safe_globals`: an allowlist kept in their own source, for those files only. That list
is the only allowlisting advice the inspector gives, and it names the library; it is
copied here from each library's source, never guessed.

How torch applies such a list (torch/_weights_only_unpickler.py, torch 2.13): the list is
one set for the whole process, not for one call; `add_safe_globals` adds to it for good,
the `safe_globals` context manager removes its names on exit, and a name is matched as the
string `{__module__}.{__qualname__}` of the object allowed in the loading process. So a list
built from `numpy._core` (numpy 2) does not match a file that names `numpy.core` (written
under numpy 1): the library's own load refuses that file. torch's own modules add names to
the same set when they are imported (torch/nested/__init__.py, torch/_dynamo/__init__.py,
torch/distributed/tensor/__init__.py, ...): TORCH_REGISTERS_ON_IMPORT below.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from typing import Any


@dataclass(frozen=True)
class LibraryLoad:
    """One library's load of its own files with weights_only=True and names of its own allowed."""

    library: str
    files: re.Pattern[str]  # the names of the files it writes and loads this way
    loader: str  # the code that loads them
    listed_in: str  # where its list is, in its own source
    numpy2: tuple[str, ...]  # its list under numpy >= 2, as the names torch matches
    numpy1: tuple[str, ...]  # under numpy 1 (numpy.core rather than numpy._core)


LIBRARY_LOADS = (
    # accelerate 1.16.0, checkpointing.py: save_accelerator_state writes the RNG states with
    # torch.save to f"{RNG_STATE_NAME}_{process_index}.pkl" (RNG_STATE_NAME = "random_states"),
    # and load_accelerator_state reads them with accelerate.utils.other.load, which adds
    # TORCH_SAFE_GLOBALS with add_safe_globals, calls torch.load(weights_only=True), then
    # restores the process's previous list. utils/other.py:
    #     np_core = np._core if is_numpy_available("2.0.0") else np.core
    #     TORCH_SAFE_GLOBALS = [np_core.multiarray._reconstruct, np.ndarray, encode, np.dtype]
    #     if is_numpy_available("1.25.0"): TORCH_SAFE_GLOBALS.append(np.dtypes.UInt32DType)
    # (the list came with huggingface/accelerate#3036; `encode` is _codecs.encode, which torch
    # allows anyway.) UInt32DType is never named in the file: torch checks the dtype's class
    # when numpy.dtype's state is set (BUILD), and np.random.get_state()'s keys are uint32.
    LibraryLoad(
        library="accelerate",
        files=re.compile(r"random_states_\d+\.pkl"),
        loader="Accelerator.load_state -> checkpointing.load_accelerator_state -> utils.other.load",
        listed_in="accelerate/utils/other.py, TORCH_SAFE_GLOBALS",
        numpy2=(
            "numpy._core.multiarray._reconstruct",
            "numpy.ndarray",
            "_codecs.encode",
            "numpy.dtype",
            "numpy.dtypes.UInt32DType",
        ),
        numpy1=(
            "numpy.core.multiarray._reconstruct",
            "numpy.ndarray",
            "_codecs.encode",
            "numpy.dtype",
            "numpy.dtypes.UInt32DType",  # numpy 1.25 and later
        ),
    ),
    # transformers, src/transformers/trainer.py (huggingface/transformers at 000945a9b726):
    # Trainer._save_rng_state saves {"python", "numpy", "cpu", and "cuda"/"xla"/... if
    # present} with torch.save to rng_state.pth, or rng_state_{process_index}.pth when
    # world_size > 1; Trainer._load_rng_state reads it with
    #     with safe_globals(): checkpoint_rng_state = torch.load(rng_file)
    # where safe_globals() is torch.serialization.safe_globals(allowlist) with
    #     np_core = np._core if numpy >= 2.0.0 else np.core
    #     allowlist = [np_core.multiarray._reconstruct, np.ndarray, np.dtype]
    #     allowlist += [type(np.dtype(np.uint32))]
    # torch.load's default is weights_only=True from torch 2.6; before that safe_globals()
    # is a nullcontext and the file is fully unpickled (this project needs torch >= 2.10).
    LibraryLoad(
        library="transformers' Trainer",
        files=re.compile(r"rng_state(_\d+)?\.pth"),
        loader="Trainer._load_rng_state, with trainer.safe_globals()",
        listed_in="transformers/trainer.py, safe_globals()",
        numpy2=(
            "numpy._core.multiarray._reconstruct",
            "numpy.ndarray",
            "numpy.dtype",
            "numpy.dtypes.UInt32DType",
        ),
        numpy1=(
            "numpy.core.multiarray._reconstruct",
            "numpy.ndarray",
            "numpy.dtype",
            "numpy.dtypes.UInt32DType",  # numpy 1.25 and later; before, numpy.dtype[uint32]
        ),
    ),
)


# Names torch's own modules allow with add_safe_globals when they are imported (torch 2.13):
# a file naming them loads with weights_only=True once that module is imported, and is
# refused before ("torch.nested and torch._dynamo must be imported to load nested jagged
# tensors"). torch.nested and torch.distributed.device_mesh come with `import torch`.
TORCH_REGISTERS_ON_IMPORT = {
    "torch.nested._internal.nested_tensor.NestedTensor": "torch.nested",
    "torch.nested._internal.nested_tensor._rebuild_njt": "torch.nested",
    "torch._dynamo.decorators._DimRange": "torch._dynamo",
    "torch.distributed._mesh_layout._FlatLayout": "torch.distributed.device_mesh",
    "torch.distributed._mesh_layout._MeshLayout": "torch.distributed.device_mesh",
    "torch.distributed._serialization._Entry": "torch.distributed._serialization",
    **{
        name: "torch.distributed.tensor"
        for name in (
            "torch.distributed.device_mesh.DeviceMesh",
            "torch.distributed.tensor.DTensor",
            "torch.distributed.tensor._dtensor_spec.DTensorSpec",
            "torch.distributed.tensor._dtensor_spec.ShardOrderEntry",
            "torch.distributed.tensor._dtensor_spec.TensorMeta",
            "torch.distributed.tensor.placement_types.Partial",
            "torch.distributed.tensor.placement_types.Replicate",
            "torch.distributed.tensor.placement_types.Shard",
            "torch.distributed.tensor.placement_types._StridedShard",
        )
    },
}


def numpy_version() -> str | None:
    """The numpy a library would load with here, or None without one."""
    try:
        return metadata.version("numpy")
    except metadata.PackageNotFoundError:
        return None


def library_load(file_name: str, beyond: list[str], numpy: str | None = None) -> dict[str, Any] | None:
    """What the library that writes a file of this name allows when it loads it, and which of
    the names `beyond` weights_only's own list it would still refuse; None for another name."""
    numpy = numpy or numpy_version()
    numpy_1 = numpy is not None and numpy.split(".")[0] == "1"
    for known in LIBRARY_LOADS:
        if not known.files.fullmatch(file_name):
            continue
        allows, other = (known.numpy1, known.numpy2) if numpy_1 else (known.numpy2, known.numpy1)
        refuses = [name for name in beyond if name not in allows]
        return {
            "library": known.library,
            "loader": known.loader,
            "listed_in": known.listed_in,
            "numpy": numpy,
            "allows": list(allows),
            "refuses": refuses,
            # names on the list the library builds under the other numpy major only
            "other_numpy_only": bool(refuses) and all(name in other for name in refuses),
        }
    return None
