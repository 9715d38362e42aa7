"""Checks on the files a shared model travels in, before anything uses them.

A Hugging Face-style folder's `config.json` (the constructor arguments), the index of a
sharded safetensors folder and its shards, an adapter's state_dict and a quantized
state_dict. Each check raises ModelFileError (one line, exit status 2 in a chapter) for a
file that is not what the chapter wrote: unexpected keys, absurd sizes, a shard outside the
folder or missing, a global nobody allowlisted. Nothing in a file is ever run.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from model_inspector.files import ZIP_MAGIC, ModelFileError, describe_load_error, open_regular_file, refusing
from model_inspector.loading import check_plain_tensor, key_list, read_untrusted
from model_inspector.pickles import check_pickle_nesting
from model_inspector.zips import check_zip_records
from support.cli import safe_text
from support.untrusted_files import MAX_WIDTH, file_bytes_for

MAX_JSON_BYTES = 64 * 1024  # a config or an index names a few keys; a megabyte of JSON is not one
SHARD_NAME = re.compile(r"[A-Za-z0-9_.-]+\.safetensors")  # a plain name inside the folder, no path


def read_small_json(path: Path) -> Any:
    """The JSON in a regular file of at most MAX_JSON_BYTES, or ModelFileError."""
    try:
        info = path.lstat()
    except OSError as err:
        raise ModelFileError(f"{path} refused: {safe_text(err.strerror)}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ModelFileError(f"{path} refused: not a regular file")
    if info.st_size > MAX_JSON_BYTES:
        raise ModelFileError(f"{path} refused: {info.st_size} bytes, over {MAX_JSON_BYTES} for JSON")
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError) as err:
        raise ModelFileError(f"{path} refused: not JSON ({safe_text(err, 80)})") from None


def check_folder_config(path: Path, expected: Iterable[str]) -> dict[str, int]:
    """A config.json holding exactly the constructor arguments `expected`, each an int in 1..MAX_WIDTH."""
    config = read_small_json(path)
    expected = sorted(expected)
    if not isinstance(config, dict) or sorted(config) != expected:
        keys = sorted(map(str, config)) if isinstance(config, dict) else type(config).__name__
        raise ModelFileError(f"{path} refused: it holds {safe_text(keys)}, expected exactly {expected}")
    for key, value in config.items():
        if type(value) is not int or not 1 <= value <= MAX_WIDTH:
            raise ModelFileError(f"{path} refused: {key} is {safe_text(value, 40)}, not in 1..{MAX_WIDTH}")
    return config


def read_safetensors(path: Path, model: nn.Module, keys: Iterable[str] | None = None) -> dict[str, Tensor]:
    """The tensors of a safetensors file, each checked against `model`'s (`keys`: those it must hold,
    by default all of the model's)."""
    from safetensors.torch import load_file  # the formats extra, imported only where one is read

    try:
        info = path.lstat()
    except OSError as err:
        raise ModelFileError(f"{path} refused: {safe_text(err.strerror)}") from None
    expected = model.state_dict()
    limit = 2 * sum(t.numel() * t.element_size() for t in expected.values()) + MAX_JSON_BYTES
    if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
        raise ModelFileError(f"{path} refused: not a regular file of at most {limit} bytes")
    try:
        state = load_file(path)
    except Exception as err:  # safetensors checks its header against the file; any failure is a refusal
        raise ModelFileError(f"{path} refused: {type(err).__name__}: {safe_text(err, 120)}") from None
    wanted = list(expected) if keys is None else list(keys)
    if sorted(state) != sorted(wanted):
        raise ModelFileError(
            f"{path} refused: it holds {key_list(sorted(state))}, expected {key_list(wanted)}"
        )
    with refusing(path):
        for key, tensor in state.items():
            check_plain_tensor(key, tensor, like=expected[key])
    return state


def read_shard_index(folder: Path, model: nn.Module) -> dict[str, Tensor]:
    """The whole state_dict of a sharded folder, read shard by shard through its index."""
    index_path = folder / "model.safetensors.index.json"
    index = read_small_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ModelFileError(f"{index_path} refused: no weight_map of tensor names to shard files")
    expected = model.state_dict()
    if sorted(weight_map) != sorted(expected):
        names = key_list(sorted(map(str, weight_map)))
        raise ModelFileError(f"{index_path} refused: it maps {names}, expected {key_list(list(expected))}")
    shards: dict[str, list[str]] = {}
    for key, name in weight_map.items():
        if not SHARD_NAME.fullmatch(name) or name.startswith("."):
            raise ModelFileError(
                f"{index_path} refused: shard {safe_text(name, 80)} is not a file in the folder"
            )
        shards.setdefault(name, []).append(key)
    state: dict[str, Tensor] = {}
    for name, keys in shards.items():
        if not (folder / name).exists():
            raise ModelFileError(f"{index_path} refused: its shard {name} is missing")
        state.update(read_safetensors(folder / name, model, keys))
    return state


def adapter_template(model: nn.Module, rank: int) -> dict[str, Tensor]:
    """What a low-rank adapter of each Linear layer of `model` holds: `lora_a` (rank x in) and
    `lora_b` (out x rank), float32, as chapter 9 names them."""
    template = {}
    for name, layer in model.named_modules():
        if isinstance(layer, nn.Linear):
            template[f"{name}.lora_a"] = torch.zeros(rank, layer.in_features)
            template[f"{name}.lora_b"] = torch.zeros(layer.out_features, rank)
    return template


def check_adapter_state(path: Path, trainable: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An adapter file holding exactly the tensors of `trainable` (names, shapes, dtypes), nothing
    of the frozen base it would silently replace."""
    limit = 2 * sum(t.numel() * t.element_size() for t in trainable.values()) + 64 * 1024
    state = read_untrusted(path, max_bytes=limit)
    if not isinstance(state, Mapping) or sorted(map(str, state)) != sorted(trainable):
        keys = key_list(sorted(map(str, state))) if isinstance(state, Mapping) else type(state).__name__
        raise ModelFileError(
            f"{path} refused: it holds {keys}, expected only the adapter's {key_list(list(trainable))}"
        )
    with refusing(path):
        for key, tensor in state.items():
            check_plain_tensor(key, tensor, like=trainable[key])
    return dict(state)


def read_with_exact_allowlist(path: Path, needs: list[type], quantized: nn.Module) -> dict[str, Any]:
    """A quantized state_dict, loaded with weights_only=True allowing torch's defaults plus exactly
    `needs`: what a library's import allowlisted for the whole process is set aside meanwhile.

    The same checks as read_untrusted, but with map_location="cpu" itself: a tensor subclass
    such as torchao's cannot be rebuilt under a map_location function."""
    with open_regular_file(path) as file, refusing(path):
        size = os.fstat(file.fileno()).st_size
        if size > file_bytes_for(quantized):
            raise ModelFileError(
                f"it has {size} bytes, more than the {file_bytes_for(quantized)} this load allows"
            )
        if not file.read(len(ZIP_MAGIC)).startswith(ZIP_MAGIC):
            raise ModelFileError("not a torch.save zip file")
        file.seek(0)
        check_zip_records(file, size)
        file.seek(0)
        check_pickle_nesting(file, is_zip=True)
        file.seek(0)
        added = torch.serialization.get_safe_globals()
        torch.serialization.clear_safe_globals()
        try:
            with torch.serialization.safe_globals(needs):
                state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:  # a file from anywhere can fail in any way; all are refusals
            raise ModelFileError(describe_load_error(err)) from None
        finally:
            torch.serialization.add_safe_globals(added)
        expected = quantized.state_dict()
        if not isinstance(state, Mapping) or sorted(map(str, state)) != sorted(expected):
            raise ModelFileError(f"its keys are not the quantized model's {key_list(list(expected))}")
        for key, tensor in state.items():
            if type(tensor) is not type(expected[key]) or tensor.shape != expected[key].shape:
                raise ModelFileError(f"{safe_text(key)} is not a {type(expected[key]).__name__} of its shape")
    return dict(state)
