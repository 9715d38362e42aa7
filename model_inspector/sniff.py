"""What kind of file is it? The first bytes decide, not the extension: a zip archive
(torch.save since PyTorch 1.6, TorchScript and torch.export's .pt2 are all zips, told apart
by their records), the legacy torch.save magic number, a pickle's protocol byte, or
safetensors' 8-byte header length followed by JSON."""

from __future__ import annotations

import zipfile

from model_inspector import other_formats
from model_inspector.files import LEGACY_MAGIC, ZIP_MAGIC

AOTI_FOLDER = "data/aotinductor/"  # where a .pt2 keeps AOTInductor's compiled model, one folder a model


def zip_layout(archive: zipfile.ZipFile) -> tuple[str, str]:
    """(kind, top folder) of a zip: torch-package, aoti, pt2, torchscript, torch-zip, or zip
    (someone else's). The formats that carry code are told first, whatever else they hold."""
    names = archive.namelist()
    folders = {name.partition("/")[0] for name in names}
    folder = folders.pop() if len(folders) == 1 else ""
    if f"{folder}/.data/extern_modules" in names:  # torch.package.PackageExporter always writes it
        return "torch-package", folder
    if f"{folder}/archive_format" in names:
        compiled = any(name.startswith(f"{folder}/{AOTI_FOLDER}") for name in names)
        return ("aoti" if compiled else "pt2"), folder
    if f"{folder}/constants.pkl" in names or any(name.startswith(f"{folder}/code/") for name in names):
        return "torchscript", folder
    if f"{folder}/data.pkl" in names:
        return "torch-zip", folder
    return "zip", folder


def is_safetensors(head: bytes) -> bool:
    """8 bytes of header length, then the JSON header: '{', after any whitespace JSON allows
    (its length is checked later)."""
    return len(head) >= 10 and head[8:].lstrip(b" \t\r\n")[:1] == b"{"


def sniff(head: bytes) -> str:
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(LEGACY_MAGIC):
        return "legacy-torch"
    if other_formats.flatbuffer_kind(head):  # an identifier says more than a pickle's first 2 bytes
        return "other"
    if is_safetensors(head):
        return "safetensors"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return "unknown"
