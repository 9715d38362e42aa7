"""Is a zip archive intact? torch.load never checks a record's CRC32: one flipped bit loads
silently. Every record is read in 1 MiB pieces and checked; compressed records (torch.save
never writes them) are listed but not inflated, so a zip bomb costs nothing; and the
archive's own structure (local headers, central directory, end records) must agree."""

from __future__ import annotations

import struct
import zipfile
from typing import IO, Any

from model_inspector.files import CHUNK, MAX_PICKLE_BYTES, ZIP_ERRORS, ZIP_MAGIC, ModelFileError
from model_inspector.standins import torch_zip_problems
from model_inspector.text import safe_text

EOCD = b"PK\x05\x06"  # the end-of-central-directory record, the last 22 bytes of a zip without a comment


ZIP64_EOCD, ZIP64_LOCATOR = b"PK\x06\x06", b"PK\x06\x07"  # torch.save writes both, before it


DESCRIPTOR = b"PK\x07\x08"  # the optional signature of a data descriptor (sizes after the data)


LOCAL_HEADER = struct.Struct(
    "<4s5H3L2H"
)  # signature, version, flags, method, time, date, CRC, sizes, lengths


def directory_end(file: IO[bytes], size: int) -> tuple[int, int, int, int] | str:
    """(records counted, directory offset, directory size, where the directory's end records
    begin) from the zip's last bytes, zip64 included; or what is wrong with them."""
    if size < 22:
        return "it is too short to end in a zip directory"
    file.seek(size - 22)
    end = file.read(22)
    if end[:4] != EOCD or end[20:22] != b"\0\0":
        return "bytes follow its end-of-central-directory record: torch.save writes none"
    _, _, _, count, directory_size, offset = struct.unpack("<4H2L", end[4:20])
    ends_at = size - 22
    file.seek(max(0, size - 42))
    locator = file.read(20)
    if size >= 42 and locator[:4] == ZIP64_LOCATOR:
        (record_at,) = struct.unpack("<Q", locator[8:16])
        file.seek(record_at)
        record = file.read(56)
        if record[:4] != ZIP64_EOCD or record_at + 12 + struct.unpack("<Q", record[4:12])[0] != size - 42:
            return "its zip64 end records do not point at each other"
        count64, size64, offset64 = struct.unpack("<3Q", record[32:56])
        for short, full, limit in (
            (count, count64, 0xFFFF),
            (directory_size, size64, 2**32 - 1),
            (offset, offset64, 2**32 - 1),
        ):
            if short not in (full, limit):
                return f"its zip64 end record says {full} where its end record says {short}"
        count, directory_size, offset, ends_at = count64, size64, offset64, record_at
    elif count == 0xFFFF or 2**32 - 1 in (offset, directory_size):
        return "its end record defers to a zip64 record that is not there"
    return count, offset, directory_size, ends_at


def zip_structure_problems(file: IO[bytes], size: int, archive: zipfile.ZipFile) -> list[str]:
    """What would make this zip mean different things to different readers.

    Python's zipfile, torch's reader and a streaming unzip each trust a different part of
    a zip: the first or the last of two records with one name, the directory or the local
    headers, the end record or its zip64 twin. torch.save writes none of these shapes: one
    record per name, each local header naming what the directory names, records back to
    back from byte 0, then the directory and its end records, nothing after.
    """
    infos = archive.infolist()
    seen: set[str] = set()
    for info in infos:
        if info.filename in seen:
            return [
                f"it has two records named {safe_text(info.filename, 80)}: "
                "readers disagree on which one counts"
            ]
        seen.add(info.filename)
    end = directory_end(file, size)
    if isinstance(end, str):
        return [end]
    count, offset, directory_size, ends_at = end
    if count != len(infos):
        return [f"its end record counts {count} records, its directory lists {len(infos)}"]
    if offset + directory_size != ends_at or offset != archive.start_dir:
        return ["its zip directory is not where its end record says (bytes were added or removed)"]
    position = 0
    for info in sorted(infos, key=lambda i: i.header_offset):
        if info.header_offset != position:
            return [f"bytes {position}..{info.header_offset} belong to no record, or records overlap"]
        position = record_end(file, info)
        if position < 0:
            return [f"the local header of record {safe_text(info.filename, 80)} disagrees with the directory"]
    if position != offset:
        return [f"bytes {position}..{offset} belong to no record, or records overlap the directory"]
    return []


def record_end(file: IO[bytes], info: zipfile.ZipInfo) -> int:
    """Where the record's bytes (and its data descriptor) end; -1 if its local header says
    something other than its directory entry: another name, method, CRC32 or size."""
    file.seek(info.header_offset)
    header = file.read(LOCAL_HEADER.size)
    if len(header) < LOCAL_HEADER.size:
        return -1
    magic, _, flags, method, _, _, crc, packed, inflated, name_length, extra_length = LOCAL_HEADER.unpack(
        header
    )
    name = file.read(name_length)
    if (
        magic != ZIP_MAGIC
        or method != info.compress_type
        or name != info.orig_filename.encode("utf-8" if flags & 0x800 else "cp437", errors="replace")
    ):
        return -1
    data_end = info.header_offset + LOCAL_HEADER.size + name_length + extra_length + info.compress_size
    expected = (info.CRC, info.compress_size, info.file_size)
    if not flags & 0x08:  # sizes in the local header: they must be the directory's (or zip64's)
        same = crc == info.CRC and all(
            short in (full, 2**32 - 1)
            for short, full in ((packed, info.compress_size), (inflated, info.file_size))
        )
        return data_end if same else -1
    if (crc, packed, inflated) != (0, 0, 0) and (crc, packed, inflated) != expected:
        return -1
    file.seek(data_end)
    descriptor = file.read(24)
    for start, fmt in ((4, "<L2L"), (4, "<L2Q"), (0, "<L2L"), (0, "<L2Q")):  # with or without its signature
        if start and descriptor[:4] != DESCRIPTOR:
            continue
        length = struct.calcsize(fmt)
        if (
            len(descriptor) >= start + length
            and struct.unpack(fmt, descriptor[start : start + length]) == expected
        ):
            return data_end + start + length
    return -1


def check_zip_records(file: IO[bytes], size: int) -> None:
    """For a torch.save zip: its layout, every record stored (not compressed), inside the file, CRC32 right.

    `torch.load` checks none of this: a flipped bit in the weights loads silently, and a
    compressed record may inflate to far more than the file's size.
    """
    try:
        archive = zipfile.ZipFile(file)
    except ZIP_ERRORS:
        raise ModelFileError("the file is truncated or corrupted (its zip archive is incomplete)") from None
    records = archive.infolist()
    folders = {info.filename.partition("/")[0] for info in records}
    folder = folders.pop() if len(folders) == 1 else ""
    if f"{folder}/data.pkl" not in archive.namelist():
        raise ModelFileError("it is a zip archive, but not one that torch.save wrote (no folder/data.pkl)")
    pickle_size = archive.getinfo(f"{folder}/data.pkl").file_size
    if pickle_size > MAX_PICKLE_BYTES:
        raise ModelFileError(
            f"its data.pkl has {pickle_size} bytes, more than the {MAX_PICKLE_BYTES} allowed for "
            "names and shapes (unpickled, each byte can cost 64)"
        )
    if any(info.compress_type != zipfile.ZIP_STORED for info in records):
        raise ModelFileError("it has compressed records; torch.save never writes them (a zip bomb?)")
    if sum(info.file_size for info in records) > size:
        raise ModelFileError("its records claim more bytes than the file holds")
    if all(info.CRC == 0 for info in records if info.file_size):
        raise ModelFileError("it carries no CRC32 checksums, so it cannot be verified")
    if any(info.flag_bits & 0x41 for info in records):  # bits 0 and 6: encrypted
        raise ModelFileError("it has encrypted records; torch.save never writes them")
    for info in records:
        try:
            with archive.open(info) as record:
                while record.read(CHUNK):
                    pass
        except ZIP_ERRORS:
            raise ModelFileError(
                f"record {safe_text(info.filename)} fails its CRC32 check: the file is damaged"
            ) from None
    if problems := zip_structure_problems(file, size, archive) or torch_zip_problems(archive, folder):
        raise ModelFileError(problems[0])


def stored_bytes(file: Any, info: zipfile.ZipInfo) -> bytes:
    """A stored record's bytes as they are, whatever its CRC32 says (that is checked apart)."""
    if info.header_offset < 0:  # a damaged directory can point before the file's start
        return b""
    file.seek(info.header_offset)
    header = file.read(30)
    if len(header) < 30 or header[:4] != ZIP_MAGIC:
        return b""
    name_length, extra_length = struct.unpack("<2H", header[26:30])
    file.seek(info.header_offset + 30 + name_length + extra_length)
    return file.read(info.file_size)


def check_records(archive: zipfile.ZipFile, size: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Each record's name, size and CRC32 verdict, and the reasons the archive is not intact."""
    records, problems = [], []
    infos = archive.infolist()
    if sum(info.file_size for info in infos) > size:
        problems.append("its records claim more bytes than the file holds")
    if all(info.CRC == 0 for info in infos if info.file_size):
        problems.append("it carries no CRC32 checksums (saved with set_crc32_options(False))")
        return [
            {"name": safe_text(i.filename, 120), "bytes": i.file_size, "crc32": "none"} for i in infos
        ], problems
    for info in infos:
        name = safe_text(info.filename, 120)
        record = {"name": name, "bytes": info.file_size, "crc32": "ok"}
        if info.compress_type != zipfile.ZIP_STORED:
            record["crc32"] = "not checked (compressed; not inflated)"
            problems.append(f"record {name} is compressed ({info.file_size} bytes once inflated)")
        elif info.file_size > size:
            record["crc32"] = "not checked (larger than the file)"
        else:
            try:
                with archive.open(info) as stream:
                    while stream.read(CHUNK):
                        pass
            except ZIP_ERRORS:
                record["crc32"] = "MISMATCH"
                problems.append(f"record {name} fails its CRC32 check: the file is damaged")
        records.append(record)
    return records, problems
