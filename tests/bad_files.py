"""A corpus of bad model files, built at test time: what an attacker or an unlucky reader hands over.

Each probe is one file (or FIFO, link, folder) at `FOLDER/iris-model.pth`, where a chapter
looks for the trained model. Built once per test session; the few that would be large
(a zip bomb, a file past the size limit) stay small on disk: the bomb is ~1 MB of deflate
blocks, the oversized file is sparse.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import resource
import struct
import sys
import warnings
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

from build_model import Multiclass
from model_inspector import files
from support.lab_tools import Hostile, memory_mb, reset_peak_memory
from support.settings import MODEL_FILE

# Terminal escape codes that, printed raw, would erase the line and claim success in green.
ESCAPES = "\x1b[2K\x1b[1G\x1b[32mOK: model loaded fine\x1b[8m"
MAX_GROWTH_MB = 256  # a refusal may allocate this much at most; the zip bomb alone would take 1024
HEADROOM = 2 * 2**30  # address space a child may add before allocation fails: the machine stays usable
EXIT_TOO_MUCH_MEMORY = 3
BOMB_BYTES = 2**30  # what the zip bomb's one record inflates to
DEEP = 60_000  # nesting depth of the deeply nested probe (its opcodes stay under the opcode limit)
MANY = 4 * 2**20  # objects the pickle bomb builds: 4 MiB of pickle, about 300 MiB once unpickled


# %%
# # Writing zip archives and pickles by hand, as an attacker would


def local_header(name: bytes, method: int, crc: int, packed: int, size: int) -> bytes:
    fields = (0, method, 0, 0x21, crc, packed, size, len(name), 0)  # flags, method, time, date, ...
    return struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, *fields)


def central_header(name: bytes, method: int, crc: int, packed: int, size: int, offset: int) -> bytes:
    fields = (0, method, 0, 0x21, crc, packed, size, len(name), 0, 0, 0, 0, 0, offset)
    return struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, *fields)


def write_zip(path: Path, records: list[tuple[str, int, int, int, Iterable[bytes]]]) -> None:
    """A zip of (name, method, crc, inflated size, chunks of stored bytes) records, streamed."""
    central = []
    with path.open("wb") as f:
        for name, method, crc, size, chunks in records:
            offset = f.tell()
            header_at = f.tell()
            f.write(local_header(name.encode(), method, crc, 0, size))
            f.write(name.encode())
            start = f.tell()
            for chunk in chunks:
                f.write(chunk)
            packed = f.tell() - start
            f.seek(header_at)
            f.write(local_header(name.encode(), method, crc, packed, size))
            f.seek(0, os.SEEK_END)
            central.append(central_header(name.encode(), method, crc, packed, size, offset) + name.encode())
        directory_at = f.tell()
        f.write(b"".join(central))
        directory_size = f.tell() - directory_at
        count = len(central)
        f.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, directory_size, directory_at, 0))


def stored(name: str, data: bytes) -> tuple[str, int, int, int, list[bytes]]:
    return (name, zipfile.ZIP_STORED, zlib.crc32(data), len(data), [data])


def torch_like_zip(path: Path, data_pkl: bytes, storages: Iterable[tuple] = ()) -> None:
    """The layout torch.save writes (archive/data.pkl, data/N, version, byteorder)."""
    write_zip(
        path,
        [
            stored("archive/data.pkl", data_pkl),
            *storages,
            stored("archive/version", b"3\n"),
            stored("archive/byteorder", b"little"),
        ],
    )


class DeclaredStorage:
    """Pickles as a reference to storage record `key` declaring `numel` float32 values on `location`."""

    def __init__(self, key: str, numel: int, location: str = "cpu") -> None:
        self.key, self.numel, self.location = key, numel, location


class DeclaredTensor:
    """Pickles the way torch.save pickles a 1-d float32 tensor over a DeclaredStorage."""

    def __init__(self, numel: int, location: str = "cpu", offset: int = 0) -> None:
        self.storage, self.offset = DeclaredStorage("0", numel, location), offset

    def __reduce__(self) -> tuple:
        size = (self.storage.numel,)
        return (
            torch._utils._rebuild_tensor_v2,
            (self.storage, self.offset, size, (1,), False, OrderedDict()),
        )


class TorchLikePickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> tuple | None:
        if isinstance(obj, DeclaredStorage):
            return ("storage", torch.FloatStorage, obj.key, obj.location, obj.numel)
        return None


def torch_pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    TorchLikePickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def global_pickle(module: str, name: str) -> bytes:
    """A pickle that imports module.name and calls it: GLOBAL, EMPTY_TUPLE, REDUCE, STOP."""
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R."


def gadget_pickle(module: str, name: str, *arguments: str) -> bytes:
    """A pickle that calls module.name(*arguments): protocol 2's GLOBAL, or protocol 4's
    STACK_GLOBAL where the name is dotted (only it reaches an attribute of an attribute)."""

    def text(value: str) -> bytes:
        return b"X" + struct.pack("<L", len(value.encode())) + value.encode()

    call = b"(" + b"".join(text(argument) for argument in arguments) + b"tR."  # MARK, ..., TUPLE
    if "." in name:
        return b"\x80\x04" + text(module) + text(name) + b"\x93" + call
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + call


def gadgets(marker: Path) -> dict[str, tuple[str, ...]]:
    """Functions outside os and builtins that run what they are given, each set to make
    `marker`: (module, name, arguments...)."""
    touch = f"open({str(marker)!r}, 'w').close()"
    return {
        "timeit.timeit": ("timeit", "timeit", "pass", touch),  # setup runs once, "pass" a million times
        "cProfile.run": ("cProfile", "run", touch),
        "pathlib.os.system": ("pathlib", "os.system", f"touch {marker}"),
        "torch.utils.collect_env.run": ("torch.utils.collect_env", "run", f"touch {marker}"),
        "pydoc.locate": ("pydoc", "locate", "os.system"),
        "operator.methodcaller": ("operator", "methodcaller", "system"),
    }


def nested_dict_pickle(depth: int) -> bytes:
    """{'a': {'a': ... {} ...}} `depth` levels deep, built by the unpickler's stack, no recursion."""
    return b"\x80\x02" + b"}X\x01\x00\x00\x00a" * depth + b"}" + b"s" * depth + b"."


def deep_key_pickle(depth: int) -> bytes:
    """{((...((),)...),): None}: a dict key of tuples `depth` deep. Hashing it recurses in C."""
    return b"\x80\x02}" + b")" + b"\x85" * depth + b"Ns."


def many_lists_pickle(count: int) -> bytes:
    """A list of `count` empty lists: one byte of pickle each, some 64 bytes of memory each."""
    return b"\x80\x02(" + b"]" * count + b"l."


def deflated_zeros(size: int) -> tuple[int, list[bytes]]:
    """CRC32 and deflate blocks of `size` zero bytes (1 MiB at a time: one block, repeated)."""
    chunk = bytes(2**20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(size // len(chunk)):
        crc = zlib.crc32(chunk, crc)
    return crc, [block] * (size // len(chunk)) + [zlib.compressobj(9, zlib.DEFLATED, -15).flush()]


# %%
# # The probes


def trained_like_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return Multiclass().state_dict()


def save(obj: object, path: Path, legacy: bool = False) -> None:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)


def make_truncated(path: Path) -> None:
    save(trained_like_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def make_foreign_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("README.txt", "not a model")


def make_malformed_metadata(path: Path) -> None:
    state = OrderedDict(trained_like_state())
    state._metadata = 5  # type: ignore[attr-defined] -- load_state_dict would call 5.get(...)
    save(state, path)


def make_sparse(path: Path) -> None:
    state = trained_like_state()
    state["hidden.weight"] = state["hidden.weight"].to_sparse()
    save(state, path)


def make_nested(path: Path) -> None:
    state = trained_like_state()
    rows = list(state["hidden.weight"])
    with warnings.catch_warnings():  # "nested tensors are a prototype": that is the point
        warnings.simplefilter("ignore")
        state["hidden.weight"] = torch.nested.nested_tensor(rows)
    save(state, path)


def make_huge_storage(path: Path) -> None:
    """A tensor declaring 2**40 float32 values (4 TiB) over a 16-byte record."""
    forged = torch_pickle({"hidden.weight": DeclaredTensor(2**40)})
    torch_like_zip(path, forged, [stored("archive/data/0", bytes(16))])


def make_zip_bomb(path: Path) -> None:
    """One deflated record that inflates to BOMB_BYTES, from a file of about 1 MB."""
    crc, blocks = deflated_zeros(BOMB_BYTES)
    bomb = ("archive/data/0", zipfile.ZIP_DEFLATED, crc, BOMB_BYTES, blocks)
    torch_like_zip(path, torch_pickle({"hidden.weight": DeclaredTensor(BOMB_BYTES // 4)}), [bomb])


def make_flipped_byte(path: Path) -> None:
    """torch.save's file with one byte of the first weight changed: its CRC32 no longer matches."""
    save(trained_like_state(), path)
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<2H", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_length + extra_length
    data[start + 1] ^= 0x40
    path.write_bytes(bytes(data))


def make_encrypted_flag(path: Path) -> None:
    """torch.save's file with the 'encrypted' flag set on one record in the zip's directory."""
    save(trained_like_state(), path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        names, entry = [info.filename for info in archive.infolist()], archive.start_dir
    for name in names:  # the directory's entries, in order; each has its flags at +8
        entry = data.index(b"PK\x01\x02", entry)
        if name.endswith("/data/0"):
            data[entry + 8] |= 0x01
        entry += 4
    path.write_bytes(bytes(data))


def make_no_crc(path: Path) -> None:
    torch.serialization.set_crc32_options(False)
    try:
        save(trained_like_state(), path)
    finally:
        torch.serialization.set_crc32_options(True)


def make_escaped_key(path: Path) -> None:
    state = trained_like_state()
    state[ESCAPES] = state.pop("hidden.weight")
    save(state, path)


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def make_too_large(path: Path) -> None:
    with path.open("wb") as f:
        f.truncate(files.MAX_FILE_BYTES + 1)  # sparse: no disk used


# Zips that torch.load reads one way and other readers another: each starts from torch.save's own file.


def saved_records(path: Path) -> list[tuple[str, bytes]]:
    """torch.save's records of a trained-like state_dict, in order, as (name, bytes)."""
    save(trained_like_state(), path)
    with zipfile.ZipFile(path) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def rewrite_records(path: Path, change: Callable[[list[tuple[str, bytes]]], None]) -> None:
    """torch.save's file rewritten record by record (stored, CRC32s right) after `change`."""
    records = saved_records(path)
    change(records)
    write_zip(path, [stored(name, data) for name, data in records])


def hostile_pickle(marker: Path) -> bytes:
    return pickle.dumps(Hostile(marker), protocol=2)


def make_duplicate_record(path: Path, marker: Path) -> None:
    """A second data.pkl, after the first: zipfile's getinfo finds the hostile one, torch the first."""
    rewrite_records(path, lambda records: records.append((records[0][0], hostile_pickle(marker))))


def make_pickle_after_stop(path: Path, marker: Path) -> None:
    """data.pkl holds the state_dict's pickle, then a second one: torch.load stops at the first STOP."""

    def append(records: list[tuple[str, bytes]]) -> None:
        records[0] = (records[0][0], records[0][1] + hostile_pickle(marker))

    rewrite_records(path, append)


def make_extra_pickle(path: Path, marker: Path) -> None:
    """A record torch.load never reads, holding a payload for whoever scans or loads it next."""

    def add(records: list[tuple[str, bytes]]) -> None:
        folder = records[0][0].partition("/")[0]
        records.append((f"{folder}/extra.pkl", hostile_pickle(marker)))

    rewrite_records(path, add)


def make_bytes_after_end(path: Path, marker: Path) -> None:
    save(trained_like_state(), path)
    with path.open("ab") as f:
        f.write(hostile_pickle(marker))


def make_local_header_lie(path: Path) -> None:
    """The first record's local header claims another size than the directory does."""
    rewrite_records(path, lambda records: None)
    data = bytearray(path.read_bytes())
    data[18:22] = struct.pack("<L", struct.unpack("<L", data[18:22])[0] + 4)  # its compressed size
    path.write_bytes(bytes(data))


def make_zip64_count_lie(path: Path) -> None:
    """torch.save's end record deferring to its zip64 twin (count 65535), which counts one more record."""
    save(trained_like_state(), path)
    data = bytearray(path.read_bytes())
    end = len(data) - 22
    (zip64_at,) = struct.unpack("<Q", data[end - 20 + 8 : end - 20 + 16])
    data[end + 10 : end + 12] = b"\xff\xff"
    (count,) = struct.unpack("<Q", data[zip64_at + 32 : zip64_at + 40])
    data[zip64_at + 32 : zip64_at + 40] = struct.pack("<Q", count + 1)
    path.write_bytes(bytes(data))


def make_short_storage(path: Path) -> None:
    """hidden.weight's record cut to 8 bytes (CRC32 right): torch.load(mmap=True) would read past it."""

    def shorten(records: list[tuple[str, bytes]]) -> None:
        at = next(i for i, (name, _) in enumerate(records) if name.endswith("/data/0"))
        records[at] = (records[at][0], records[at][1][:8])

    rewrite_records(path, shorten)


def shared_lists_pickle(levels: int = 30, width: int = 8) -> bytes:
    """Lists of the same list, `levels` deep: ~1 KB of pickle, width**levels paths to walk."""
    value: list = []
    for _ in range(levels):
        value = [value] * width
    return pickle.dumps(value, protocol=2)


SAVE_TAGGED: list[str] = []  # while it holds a tag, torch.save writes it as every storage's device


def save_tagged(obj: object, path: Path, tag: str) -> None:
    """torch.save, with every storage tagged `tag` in the file: what a save on that device
    writes ('cuda:0', 'xla:0'), or a tag no device has."""
    SAVE_TAGGED[:] = [tag]
    try:
        save(obj, path)
    finally:
        SAVE_TAGGED.clear()


# Registered once, ahead of torch's own taggers: torch sorts its registry as it grows, and
# cannot compare two of its own entries that share a priority.
torch.serialization.register_package(-90, lambda s: SAVE_TAGGED[0] if SAVE_TAGGED else None, lambda *_: None)
DEVICE_TAGS = ["xla:0", "privateuseone:0", "cuda:-1", "meta", "cpu:7"]


def probes(marker: Path) -> dict[str, Callable[[Path], None]]:
    """Probe name -> a function that writes that probe at the path it is given."""
    state = trained_like_state

    def with_weight(tensor: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Path], None]:
        return lambda p: save({k: tensor(v) if k == "hidden.weight" else v for k, v in state().items()}, p)

    return {
        "empty": lambda p: p.write_bytes(b""),
        "truncated": make_truncated,
        "random bytes": lambda p: p.write_bytes(random.Random(0).randbytes(4096)),
        "text": lambda p: p.write_text("fc1.weight = [[0.1, 0.2]]\n"),
        "foreign zip": make_foreign_zip,
        "hostile torch.save": lambda p: save({"hidden.weight": Hostile(marker)}, p),
        "hostile pickle": lambda p: p.write_bytes(pickle.dumps(Hostile(marker))),
        "hostile legacy torch.save": lambda p: save(Hostile(marker), p, legacy=True),
        "whole model": lambda p: save(Multiclass(), p),
        "list of tensors": lambda p: save(list(state().values()), p),
        "wrong shape": lambda p: save(Multiclass(n_hidden=2).state_dict(), p),
        "missing key": lambda p: save({k: v for k, v in state().items() if k != "output.bias"}, p),
        "extra key": lambda p: save({**state(), "extra.weight": torch.zeros(3)}, p),
        "NaN weights": with_weight(lambda t: torch.full_like(t, float("nan"))),
        "int weights": with_weight(lambda t: t.to(torch.int64)),
        "float16 weights": with_weight(lambda t: t.half()),
        "meta tensors": lambda p: save({k: v.to("meta") for k, v in state().items()}, p),
        "sparse tensor": make_sparse,
        "nested tensor": make_nested,
        "malformed _metadata": make_malformed_metadata,
        "deep nesting": lambda p: torch_like_zip(p, nested_dict_pickle(DEEP)),
        "deeply nested key": lambda p: torch_like_zip(p, deep_key_pickle(3 * DEEP)),
        "huge declared storage": make_huge_storage,
        "pickle bomb": lambda p: torch_like_zip(p, many_lists_pickle(MANY)),
        "legacy format": lambda p: save(state(), p, legacy=True),
        "zip bomb": make_zip_bomb,
        "flipped byte": make_flipped_byte,
        "no CRC32": make_no_crc,
        "encrypted flag": make_encrypted_flag,
        "escape codes in a GLOBAL (zip)": lambda p: torch_like_zip(p, global_pickle(ESCAPES, "x")),
        "escape codes in a GLOBAL (pickle)": lambda p: p.write_bytes(global_pickle(ESCAPES, "x")),
        "escape codes in a key": make_escaped_key,
        "FIFO": make_fifo,
        "link to /dev/urandom": lambda p: p.symlink_to("/dev/urandom"),
        "link to /dev/zero": lambda p: p.symlink_to("/dev/zero"),
        "directory": lambda p: p.mkdir(),
        "larger than the limit": make_too_large,
        "missing": lambda p: None,
        "two records with one name": lambda p: make_duplicate_record(p, marker),
        "a pickle after data.pkl's STOP": lambda p: make_pickle_after_stop(p, marker),
        "an extra pickle record": lambda p: make_extra_pickle(p, marker),
        "bytes after the end record": lambda p: make_bytes_after_end(p, marker),
        "a local header that lies": make_local_header_lie,
        "a zip64 count that lies": make_zip64_count_lie,
        "a storage record too short": make_short_storage,
        "a view past its storage": lambda p: torch_like_zip(
            p,
            torch_pickle({"hidden.weight": DeclaredTensor(4, offset=8)}),
            [stored("archive/data/0", bytes(16))],
        ),
        "shared lists 30 deep": lambda p: torch_like_zip(p, shared_lists_pickle()),
        "pickle bomb under the size limit": lambda p: torch_like_zip(
            p, many_lists_pickle(files.MAX_PICKLE_BYTES - 16)
        ),
        "protocol 0 hostile pickle": lambda p: p.write_bytes(pickle.dumps(Hostile(marker), protocol=0)),
        "integer keys": lambda p: save({0: torch.zeros(1)}, p),
        **{f"storages tagged {tag}": lambda p, tag=tag: save_tagged(state(), p, tag) for tag in DEVICE_TAGS},
        "one value seen 32 times": with_weight(lambda t: torch.ones(1).expand(8, 4)),
        "two weights over one storage": lambda p: save(
            (lambda s: {**s, "output.bias": s["hidden.bias"][:3]})(state()), p
        ),
        **{
            f"a {name} gadget": lambda p, call=call: torch_like_zip(p, gadget_pickle(*call))
            for name, call in gadgets(marker).items()
        },
    }


def damaged_copies(data: bytes, count: int, seed: int = 0) -> Iterator[bytes]:
    """`count` copies of `data`, each with a few random bytes changed, cut, inserted or dropped."""
    rng = random.Random(seed)
    for _ in range(count):
        copy = bytearray(data)
        for _ in range(rng.choice([1, 1, 2, 5])):
            if not copy:
                break
            at, choice = rng.randrange(len(copy)), rng.random()
            if choice < 0.5:
                copy[at] = rng.randrange(256)
            elif choice < 0.7:
                del copy[at : at + rng.randrange(1, 64)]
            elif choice < 0.85:
                copy[at:at] = rng.randbytes(rng.randrange(1, 16))
            else:
                del copy[at:]
        yield bytes(copy)


def build_corpus(root: Path, marker: Path) -> dict[str, Path]:
    """Probe name -> its folder, holding the probe as MODEL_FILE."""
    corpus = {}
    for index, (name, make) in enumerate(probes(marker).items()):
        folder = root / f"{index:02d}"
        folder.mkdir()
        make(folder / MODEL_FILE)
        corpus[name] = folder
    return corpus


# %%
# # Bounding a child process's memory


def limit_memory() -> float:
    """Cap this process's address space at its current size plus HEADROOM; return its RSS in MiB."""
    with Path("/proc/self/status").open() as status:
        size_kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    limit = size_kb * 1024 + HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    reset_peak_memory()
    return memory_mb("VmRSS") or 0.0


def grew_too_much(before_mb: float) -> bool:
    grown = (memory_mb("VmHWM") or 0.0) - before_mb
    if grown > MAX_GROWTH_MB:
        print(f"memory grew by {grown:.0f} MiB", file=sys.stderr)
        return True
    return False


# %%
# # DCP checkpoint folders: what `distributed_checkpoint.py --load-only` meets
#
# Each probe is a folder `dcp-checkpoint` (and its manifest `dcp-checkpoint.sha256` beside
# it) written under the root it is given, made from a small, valid DCP checkpoint of
# Multiclass and Adam saved on one process. Most carry a manifest that matches their bytes,
# as an attacker who can write the folder would write it: the checks behind the manifest
# must hold on their own.

DCP_FOLDER = "dcp-checkpoint"
DCP_DEEP_KEY = 200_000  # tuples around a dict key in .metadata: a SIGSEGV when hashed, unchecked
DCP_DEEP_KEY_UNDER_CAP = 60_000  # as deep, but small enough to pass the size cap: the nesting check


def dcp_state(hostile_lr: object = None) -> dict:
    """Multiclass's and Adam's state as a one-process dcp.load fills it (flat DCP names)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    torch.manual_seed(0)
    model = Multiclass()
    model_state, optimizer_state = get_state_dict(model, torch.optim.Adam(model.parameters()))
    if hostile_lr is not None:
        optimizer_state["param_groups"][0]["lr"] = hostile_lr
    return {"model": model_state, "optimizer": optimizer_state}


def save_dcp(folder: Path, state: dict) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=folder, no_dist=True)


def rewrite_metadata(folder: Path, change: Callable[[object], None]) -> None:
    """Unpickle our own .metadata, let `change` forge it, pickle it back."""
    path = folder / ".metadata"
    metadata = pickle.loads(path.read_bytes())
    change(metadata)
    path.write_bytes(pickle.dumps(metadata))


def storage_of(metadata: object, name: str) -> object:
    return next(info for index, info in metadata.storage_data.items() if index.fqn == name)


def forge_chunk(
    metadata: object, name: str, sizes: tuple[int, ...], size: tuple[int, ...] | None = None
) -> None:
    item = metadata.state_dict_metadata[name]
    item.chunks[0].sizes = torch.Size(sizes)
    if size is not None:
        item.size = torch.Size(size)


def flip_weight_bit(folder: Path) -> None:
    """Flip one bit of hidden.weight's first value, inside __0_0.distcp's tensor data."""
    values = dcp_state()["model"]["hidden.weight"].numpy().tobytes()
    shard = folder / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[data.index(values) + 1] ^= 0x10
    shard.write_bytes(bytes(data))


def dcp_probes(marker: Path) -> dict[str, tuple[Callable[[Path], None], bool, str]]:
    """Probe name -> (what it does to a good checkpoint folder, whether to write the manifest after,
    what its refusal says)."""
    from model_inspector.files import MAX_FILE_BYTES

    def metadata_bytes(data: bytes) -> Callable[[Path], None]:
        return lambda folder: (folder / ".metadata").write_bytes(data)

    def forged(change: Callable[[object], None]) -> Callable[[Path], None]:
        return lambda folder: rewrite_metadata(folder, change)

    def set_storage(name: str, **fields: object) -> Callable[[object], None]:
        return lambda metadata: [setattr(storage_of(metadata, name), k, v) for k, v in fields.items()]

    lr = "optimizer.param_groups.0.lr"
    weight = "model.hidden.weight"
    return {
        "hostile .metadata": (
            metadata_bytes(pickle.dumps(Hostile(marker))),
            True,
            ".metadata refers to builtins.exec, not DCP metadata",
        ),
        "hostile non-tensor item": (
            lambda f: save_dcp(f, dcp_state(Hostile(marker))),
            True,
            "optimizer.param_groups.0.lr in __0_0.distcp",  # and nothing ran: the marker
        ),
        "deeply nested key in .metadata": (
            metadata_bytes(deep_key_pickle(DCP_DEEP_KEY)),
            True,
            "more than the",
        ),
        "deeply nested key in a small .metadata": (
            metadata_bytes(deep_key_pickle(DCP_DEEP_KEY_UNDER_CAP)),
            True,
            "nested more than 200 levels deep",
        ),
        "24 MB pickle bomb in .metadata": (
            metadata_bytes(many_lists_pickle(24 * 2**20)),
            True,
            "more than the",
        ),
        "pickle bomb in .metadata, under the size cap": (
            metadata_bytes(many_lists_pickle(30_000)),
            True,
            "not DCP's index",
        ),
        "garbage .metadata": (metadata_bytes(b"not a pickle"), True, ".metadata is damaged"),
        "non-tensor item of 2^40 bytes": (
            forged(set_storage(lr, length=2**40)),
            True,
            "truncated or the index forged",
        ),
        "tensor chunk at offset 10^12": (
            forged(set_storage(weight, offset=10**12)),
            True,
            "truncated or the index forged",
        ),
        "truncated shard": (
            lambda f: (f / "__0_0.distcp").write_bytes((f / "__0_0.distcp").read_bytes()[:5000]),
            True,
            "truncated or the index forged",
        ),
        "item stored outside the folder": (
            forged(set_storage(weight, relative_path="../__0_0.distcp")),
            True,
            "not in the folder",
        ),
        "chunk larger than its tensor": (
            forged(lambda m: forge_chunk(m, weight, (8, 5))),
            True,
            "does not fit",
        ),
        "chunk that covers half its tensor": (
            forged(lambda m: forge_chunk(m, weight, (4, 4))),
            True,
            "do not cover",
        ),
        "tensor of another shape than the model's": (
            forged(lambda m: forge_chunk(m, weight, (9, 4), size=(9, 4))),
            True,
            "has shape (9, 4), expected (8, 4)",
        ),
        "tensor the model does not have": (
            forged(lambda m: m.state_dict_metadata.__setitem__("model.extra", m.state_dict_metadata[weight])),
            True,
            "which the model does not have",
        ),
        "flipped bit in a weight": (flip_weight_bit, False, "does not match its SHA-256"),
        "flipped bit in a weight, manifest rewritten": (flip_weight_bit, True, "fails its CRC32 check"),
        "no manifest": (lambda f: manifest_of(f).unlink(), False, "no checksum manifest"),
        "manifest missing a file": (
            lambda f: (f / "__1_0.distcp").write_bytes(b""),
            False,
            "exactly the files",
        ),
        "extra file in the folder": (lambda f: (f / "notes.txt").write_text("hi"), True, "not a DCP file"),
        "FIFO .metadata": (lambda f: ((f / ".metadata").unlink(), os.mkfifo(f / ".metadata")), False, "FIFO"),
        "no .metadata": (
            lambda f: (f / ".metadata").unlink(),
            False,
            ".metadata not found; create it with: python distributed_checkpoint.py",
        ),
        "shard larger than the cap": (
            lambda f: (f / "__0_0.distcp").open("r+b").truncate(MAX_FILE_BYTES + 1),
            False,
            "more than the",
        ),
    }


def manifest_of(folder: Path) -> Path:
    return folder.with_name(f"{folder.name}.sha256")


def build_dcp_probe(root: Path, damage: Callable[[Path], None], manifest_after: bool) -> Path:
    """A good checkpoint folder `root/dcp-checkpoint` with its manifest, then `damage` done to it."""
    from model_inspector.dcp import write_manifest

    folder = root / DCP_FOLDER
    save_dcp(folder, dcp_state())
    write_manifest(folder)
    damage(folder)
    if manifest_after:
        write_manifest(folder)
    return folder
