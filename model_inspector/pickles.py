"""What a pickle would import, read from its opcodes and never run, and what that means.

The globals a file names beyond what `weights_only=True` allows are what
`torch.serialization.safe_globals([...])` would have to allow. Only allow classes you
trust: a name like `builtins.exec` is code, not data, and so is any function a file can
call with arguments of its choosing. numpy's array and dtype rebuilders are neither: they
rebuild data, and are allowed only for a file whose source you trust. The one allowlist
given as such is a library's own, for a file it writes and loads itself (accelerate's
random_states_0.pkl, transformers' rng_state.pth), named as that library's (allowlists.py)."""

from __future__ import annotations

import io
import pickletools
import zipfile
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from typing import IO

from model_inspector import allowlists
from model_inspector.files import MAX_PICKLE_OPS, ModelFileError
from model_inspector.report import Report
from model_inspector.text import safe_text


def pickle_globals(data: bytes, limit: int = 20, pickles: int = 1) -> list[str]:
    """The `module.name` globals the first `pickles` pickles in `data` would import, found by
    reading their opcodes, not running them (all of them: pass a large `pickles`).

    Reading stops at the first malformed opcode, and after MAX_PICKLE_OPS opcodes. GLOBAL and
    INST (protocols 0 to 3) carry their names; a STACK_GLOBAL takes its two from the stack,
    so the strings pushed (or fetched from the memo) before it are tracked, as pickle
    scanners do; anything else pushed counts as a non-string.
    """
    found: list[str] = []
    start, count = 0, 0
    for _ in range(pickles):
        end = scan_one_pickle(data, start, found, limit, MAX_PICKLE_OPS - count)
        if end < 0 or end >= len(data) or len(found) >= limit:
            break
        count += end - start  # at least one byte an opcode: a bound on the opcodes read
        start = end
    return list(dict.fromkeys(found))


def scan_one_pickle(data: bytes, start: int, found: list[str], limit: int, budget: int) -> int:
    """Add the globals of the pickle at `data[start:]` to `found`; where it ends, or -1 if it does not."""
    pushed: list[str | None] = []  # what each opcode left on the stack, if it was a string
    memo: dict[int, str | None] = {}
    try:
        for count, (opcode, arg, position) in enumerate(pickletools.genops(data[start:])):
            name = opcode.name
            if name in ("GLOBAL", "INST"):  # two lines follow: the module, then the name
                module, attribute = data[start + position + 1 :].split(b"\n", 2)[:2]
                found.append(f"{module.decode(errors='replace')}.{attribute.decode(errors='replace')}")
            elif name == "STACK_GLOBAL" and len(pushed) >= 2 and None not in pushed[-2:]:
                found.append(f"{pushed[-2]}.{pushed[-1]}")
            if name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = pushed[-1] if pushed else None
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(int(arg)))
            elif name not in ("PROTO", "FRAME"):
                is_string = isinstance(arg, str) and ("UNICODE" in name or "STRING" in name)
                pushed.append(arg if is_string else None)
            if name == "STOP":
                return start + position + 1
            if len(found) >= limit or count >= budget:
                break
    except (ValueError, EOFError):  # a malformed or cut-short pickle: report what was found so far
        pass
    return -1


def is_pickle(data: bytes) -> bool:
    """Whether `data` is one whole pickle of any protocol (0 and 1 start with no PROTO byte)."""
    try:
        for count, (opcode, _, position) in enumerate(pickletools.genops(data)):
            if opcode.name == "STOP":
                return count > 0 and position + 1 == len(data.rstrip(b"\n"))
            if count >= MAX_PICKLE_OPS:
                return False
    except (ValueError, EOFError):
        pass
    return False


def too_many_ops() -> str:
    return (
        f"its pickle has more than {MAX_PICKLE_OPS} opcodes, far more than names and shapes need "
        "(a pickle bomb?)"
    )


def pickle_budget_problem(data: bytes) -> str:
    """Why `data`'s first pickle is too much to read through (too many opcodes), or ''."""
    try:
        for count, _ in enumerate(pickletools.genops(data)):
            if count >= MAX_PICKLE_OPS:
                return too_many_ops()
    except (ValueError, EOFError):  # malformed: whatever reads it next says so
        pass
    return ""


MAX_NESTING = 200  # containers inside containers; a checkpoint here nests about ten levels deep


LEGACY_PICKLES = 5  # a pre-zip torch.save file: magic number, protocol, sys info, data, storage keys


MUTATORS = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}  # add to the object below


def check_pickle_nesting(file: IO[bytes], is_zip: bool, limit: int = MAX_NESTING) -> None:
    """Refuse pickled data that nests containers more than `limit` deep, before unpickling it.

    `torch.load` rebuilds any depth without complaint, but Python hashes and compares
    nested tuples recursively in C: a dict key nested a few hundred thousand levels deep
    crashes the process (SIGSEGV) instead of raising. The opcodes are only read, not run.
    """
    if is_zip:
        archive = zipfile.ZipFile(file)
        pickles = [name for name in archive.namelist() if name == "data.pkl" or name.endswith("/data.pkl")]
        streams = [io.BytesIO(archive.read(name)) for name in pickles[:1]]
        count = 1
    else:
        streams, count = [file], LEGACY_PICKLES
    for stream in streams:
        for _ in range(count):
            try:
                deepest = pickle_nesting(stream, limit)
            except (ValueError, IndexError, KeyError, EOFError):
                return  # not a well-formed pickle: torch.load reports that itself
            if deepest > limit:
                raise ModelFileError(f"its data is nested more than {limit} levels deep")


def pickle_nesting(stream: IO[bytes], limit: int) -> int:
    """How deeply the next pickle in `stream` nests its containers (stops counting past `limit`)."""
    depth: dict[int, int] = {}  # per object made, the containers nested in it, itself included
    stack: list[int | None] = []  # object numbers; None for a MARK
    memo: dict[object, int] = {}
    deepest = 0
    for count, (opcode, arg, _) in enumerate(pickletools.genops(stream)):
        name = opcode.name
        if name == "STOP":
            break
        if count >= MAX_PICKLE_OPS:
            raise ModelFileError(too_many_ops())
        if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
            continue
        if name in ("GET", "BINGET", "LONG_BINGET", "DUP"):
            stack.append(memo[arg] if name != "DUP" else stack[-1])
            continue
        if name == "MARK":
            stack.append(None)
            continue
        before = opcode.stack_before
        popped: list[int] = []
        if pickletools.markobject in before:
            while (item := stack.pop()) is not None:
                popped.append(item)
            below = before.index(pickletools.markobject)
        else:
            below = len(before)
        popped += [stack.pop() for _ in range(below)]  # the object below the mark comes last
        if not opcode.stack_after:
            continue
        inner = max((depth[item] for item in popped[:-1] if item is not None), default=0)
        if name in MUTATORS:  # the container stays the same object, now holding more
            target = popped[-1]
            depth[target] = max(depth[target], inner + 1)
        else:
            target = len(depth)
            depth[target] = 1 + max((depth[item] for item in popped if item is not None), default=-1)
        stack.append(target)
        deepest = max(deepest, depth[target])
        if deepest > limit:
            break
    return deepest


# What runs code when unpickled: never allowlist these with safe_globals, whatever the file says.
# (storage, offset, size, stride, ...): a quantized tensor's rebuild starts as a plain tensor's
TENSOR_REBUILDERS = {
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_qtensor",
}

RUNS_CODE_MODULES = (
    "os.", "posix.", "nt.", "subprocess.", "sys.", "importlib.", "runpy.", "shutil.", "socket.",
    "pickle.", "_pickle.", "code.", "pty.", "webbrowser.", "ctypes.", "marshal.", "types.",
)  # fmt: skip


RUNS_CODE_BUILTINS = {
    "exec", "eval", "compile", "getattr", "setattr", "delattr", "__import__", "open",
    "breakpoint", "input", "globals", "vars", "apply", "execfile",
}  # fmt: skip


# numpy's own pickle rebuilders, outside weights_only's list. Each rebuilds an array, a dtype
# or a scalar from the shape, dtype and bytes the file gives, and calls nothing the file
# names: `_reconstruct(ndarray, shape, dtype)` makes an empty array of a class the unpickler
# already allowed, ndarray.__setstate__ copies the file's bytes in (an object array's items
# come from the same restricted unpickler), `dtype(...)` parses a dtype's description, and
# `scalar(dtype, bytes)` makes one number. So they are no way to run code of the file's
# choosing, unlike os.system; but numpy's C code parses the file's bytes, and has crashed
# on malformed ones (numpy 2.4.6 segfaults on an object array with fewer items than its
# shape): allow them only for a file whose source you trust. numpy.dtypes holds DType classes.
NUMPY_DATA_REBUILDERS = frozenset(
    {f"numpy.{core}.multiarray.{name}" for core in ("core", "_core") for name in ("_reconstruct", "scalar")}
    | {"numpy.ndarray", "numpy.dtype"}
)


def weights_only_names() -> frozenset[str]:
    """The globals `weights_only=True` allows: the tensor, storage and dtype rebuilders."""
    try:  # a private table: fall back to the names every torch.save file of tensors uses
        from torch._weights_only_unpickler import _get_allowed_globals

        return frozenset(_get_allowed_globals())
    except (ImportError, AttributeError, TypeError):
        return frozenset(TENSOR_REBUILDERS | {"collections.OrderedDict", "torch.Size"})


KNOWN_DATA_GLOBALS = weights_only_names()


def as_torch_reads(name: str) -> str:
    """The name as torch's unpickler looks it up: a protocol-2 pickle's Python 2 names are
    mapped first, as pickle does (`__builtin__.set` is `builtins.set`, `commands.getoutput`
    is `subprocess.getoutput`)."""
    module, _, attribute = name.rpartition(".")
    module, attribute = NAME_MAPPING.get((module, attribute), (IMPORT_MAPPING.get(module, module), attribute))
    return f"{module}.{attribute}" if module else attribute


def rebuilds_data(name: str) -> bool:
    """True for numpy's rebuilders of arrays, dtypes and scalars (NUMPY_DATA_REBUILDERS)."""
    module, _, attribute = as_torch_reads(name).rpartition(".")
    return f"{module}.{attribute}" in NUMPY_DATA_REBUILDERS or (
        module == "numpy.dtypes" and attribute.isidentifier() and attribute.endswith("DType")
    )


def registered_by_torch(name: str) -> str | None:
    """The torch module whose import allows `name` for weights_only (it calls add_safe_globals)."""
    return allowlists.TORCH_REGISTERS_ON_IMPORT.get(as_torch_reads(name))


def runs_code(name: str) -> bool:
    """True for a function, a gadget or anything but a class outside the names weights_only
    allows and numpy's data rebuilders: unpickling calls it with arguments the file chooses,
    so any such function (`timeit.timeit`, `pydoc.locate`, `operator.methodcaller`, ...) can
    run code. A class (a CapWords name outside the modules that run commands) is listed for
    safe_globals instead."""
    if as_torch_reads(name) in KNOWN_DATA_GLOBALS or rebuilds_data(name) or registered_by_torch(name):
        return False
    module, _, attribute = as_torch_reads(name).rpartition(".")
    if not all(part.isidentifier() for part in name.split(".")) or not module:
        return True
    if module == "builtins" and attribute in RUNS_CODE_BUILTINS:
        return True
    if any(f"{part}." in RUNS_CODE_MODULES for part in module.split(".")):  # pathlib.os.system too
        return True
    return not attribute.lstrip("_")[:1].isupper()  # _StorageInfo is a class too


def note_globals(report: Report, found: list[str], unsafe: list[str] | None, file_name: str = "") -> None:
    """Record the globals found; `unsafe` (those weights_only would refuse) is None where
    weights_only does not apply at all (a plain pickle, DCP's .metadata). For a file that a
    known library writes and loads with names of its own allowed (allowlists.py),
    the names on that library's list are its advice, not a guess of this tool's."""
    needs = report.needs
    needs.globals = sorted(safe_text(name, 100) for name in found)
    library = allowlists.library_load(file_name, unsafe) if unsafe is not None else None
    if library:
        needs.library_load = {**library, "refuses": [safe_text(name, 100) for name in library["refuses"]]}
    covered = set(library["allows"]) if library and not library["refuses"] else set()
    named = [name for name in (found if unsafe is None else unsafe) if name not in covered]
    needs.never_allow = [safe_text(name, 100) for name in named if runs_code(name)]
    needs.data_only = [safe_text(name, 100) for name in named if rebuilds_data(name)]
    if unsafe is not None:
        needs.scanned_by_torch = True
        needs.not_allowed_by_weights_only = [safe_text(name, 100) for name in unsafe]
        needs.safe_globals_needed = [
            safe_text(name, 100)
            for name in named
            if not runs_code(name) and not rebuilds_data(name) and not registered_by_torch(name)
        ]
        for name in unsafe:  # torch allows these itself, once the module that registers them is imported
            if module := registered_by_torch(name):
                needs.import_first.setdefault(module, []).append(safe_text(name, 100))


def legacy_globals(data: bytes) -> list[str]:
    """The globals of every pickle in a legacy file (magic, protocol, sys info, object, keys):
    a payload may sit in any of them, not only the object's."""
    return pickle_globals(data, limit=200, pickles=LEGACY_PICKLES)


def safe_ops(data: bytes) -> list[tuple]:
    """The opcodes of the first pickle in `data`, up to the first malformed one."""
    ops = []
    try:
        for op in pickletools.genops(data):
            ops.append(op)
            if op[0].name == "STOP":
                break
    except (ValueError, EOFError):
        pass
    return ops
