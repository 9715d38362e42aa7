"""The command line: `inspect-model PATH` (or `python inspect_file.py PATH`).

The flags are parsed and the path checked before torch is imported, so --help, a bad flag
and a missing file are answered at once, in one line. Ctrl-C ends it in one line too: the
tool writes nothing, so there is nothing to clean up."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from model_inspector.process import skip_final_collection
from model_inspector.text import EXIT_BAD_INPUT, OneLineParser, error_line, fail, not_found, safe_text

if TYPE_CHECKING:
    from torch import nn

EXIT_INTERRUPTED = 130  # the shell's status for a process ended by Ctrl-C (128 + SIGINT)
DEFAULT_PATH = Path("artifacts/iris-model.pth")  # the walkthrough's trained model (chapter 2)
# --model Multiclass: the walkthrough's model file, beside this package (as an editable install keeps it)
WALKTHROUGH_MODEL = Path(__file__).resolve().parent.parent / "build_model.py"
DESCRIPTION = """\
Inspect any model file without running it: what it is, what it holds, what loading it
would import, whether it is intact, and whether it fits your model.

A .pth from a colleague, last month's checkpoint (legacy format, Lightning, saved on a
GPU), a .safetensors download or a Hugging Face folder (sharded or not, or a hub cache
snapshot), a TorchScript or .pt2 program, or a DCP folder. ONNX, GGUF, NumPy, HDF5/Keras,
TensorFlow Lite and ExecuTorch files are named, with what reads them; so are the formats
that carry code (TorchScript, torch.package, AOTInductor packages), with what would run it.
Everything is read from one snapshot of the file's bytes. Nothing in the file is executed:
a plain pickle is never unpickled, and torch.load is only ever called with
weights_only=True, after the file's checksums and sizes have been checked.

PATH defaults to artifacts/iris-model.pth (the walkthrough's trained model). Reads PATH
only and writes nothing. Exit status 0: intact, and loads as the report says (a load it
has tried) and fits the model if one was named; 2: anything else, with the reasons listed;
130: interrupted."""


def command_line() -> OneLineParser:
    parser = OneLineParser(
        prog=None if Path(sys.argv[0]).name == "inspect_file.py" else "inspect-model",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="--model-file imports and runs that Python file: it must be your own code. "
        "The file being inspected is never run.",
    )
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH, help="file or folder to inspect")
    parser.add_argument(
        "--model",
        choices=["Multiclass"],
        help="check the file against the model of build_model.py",
    )
    parser.add_argument("--model-file", type=Path, help="YOUR file defining the model class (it is run)")
    parser.add_argument("--model-class", help="the class in --model-file to check against")
    parser.add_argument(
        "--model-args",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="constructor arguments: n_hidden=8",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON, for scripts")
    return parser


def interrupted(signum: int, frame: FrameType | None) -> NoReturn:
    os.write(2, b"interrupted (Ctrl-C); nothing was saved\n")
    os._exit(EXIT_INTERRUPTED)


def model_class_named(args: argparse.Namespace) -> type[nn.Module] | None:
    """The class --model or --model-file names (importing --model-file runs it: the reader's own code)."""
    if args.model_file:
        if not args.model_class:
            fail("--model-file needs --model-class NAME")
        return load_model_class(args.model_file, args.model_class)
    if args.model:
        if not WALKTHROUGH_MODEL.is_file():
            fail(f"--model Multiclass needs the walkthrough's {WALKTHROUGH_MODEL}; use --model-file instead")
        return load_model_class(WALKTHROUGH_MODEL, "Multiclass")
    return None


def model_to_check(args: argparse.Namespace) -> tuple[str, nn.Module | None]:
    """The model named on the command line, built on the meta device; fails in one line."""
    import torch

    kwargs = {}
    for item in args.model_args:
        name, equals, text = item.partition("=")
        if not equals or not name.isidentifier():
            fail(f"--model-args takes NAME=VALUE, got {item!r}")
        try:
            kwargs[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            kwargs[name] = text
    if args.model_args and not (args.model or args.model_file):
        fail("--model-args needs --model or --model-file")
    model_class = model_class_named(args)
    if model_class is None:
        return "", None
    described = f"{model_class.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    try:
        with torch.device("meta"):
            return described, model_class(**kwargs)
    except Exception as err:  # the reader's own constructor, with the reader's arguments
        fail(f"cannot build {safe_text(described)}: {error_line(err)}")


def load_model_class(path: Path, name: str) -> type[nn.Module]:
    """Import the reader's own model file (this runs it) and return the class `name`."""
    from torch import nn

    spec = importlib.util.spec_from_file_location("reader_model", path)
    if spec is None or spec.loader is None or not path.is_file():
        fail(f"--model-file {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # where dataclasses and pickle look a class's module up
    sys.path.insert(0, str(path.resolve().parent))  # so it can import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the reader's code: report its failure in one line
        fail(f"--model-file {path} failed: {error_line(err)}")
    finally:
        sys.path.pop(0)
    model_class = getattr(module, name, None)
    if not (isinstance(model_class, type) and issubclass(model_class, nn.Module)):
        fail(f"{path} defines no nn.Module class named {name}")
    return model_class


def main(argv: list[str] | None = None) -> NoReturn:
    """Inspect the path on the command line, print the report, and exit 0 or 2."""
    signal.signal(signal.SIGINT, interrupted)
    args = command_line().parse_args(argv)
    if not os.path.lexists(args.path):
        fail(not_found(args.path))
    from model_inspector.files import ModelFileError
    from model_inspector.inspection import inspect_path
    from model_inspector.render import render

    described, model = model_to_check(args)
    try:
        report = inspect_path(args.path, described, model)
    except ModelFileError as err:
        fail(err)
    except (OSError, RecursionError, MemoryError) as err:
        fail(f"cannot inspect {args.path}: {error_line(err)}")
    try:
        print(render(report, as_json=args.json))
        sys.stdout.flush()
    except BrokenPipeError:  # `inspect-model FILE | head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.stderr.flush()
    skip_final_collection()
    raise SystemExit(EXIT_BAD_INPUT if report.reasons else 0)
