# %% [markdown]
# # Chapter 9: share and ship a model
#
# What you do after saving a model for yourself: give it to someone without your training
# script. A folder others can load (`config.json` plus `model.safetensors`, by hand and
# with `huggingface_hub`'s `PyTorchModelHubMixin`), rebuilt in a fresh process; tied
# weights, which safetensors refuses and `save_model` keeps; shards with an index; an
# adapter saved without its frozen base; and int8 weights with torchao, loaded back with
# `weights_only=True` and an exact allowlist.
#
#     python share_model.py [--seed 42]      (after python train_iris.py)
#     python share_model.py --folder DIR | --adapter FILE | --int8 FILE
#
# With one of the last three, the chapter reads what someone shared with you instead,
# through checks, says what it holds and stops: a folder (`config.json` and
# `model.safetensors`, or shards and their index), an adapter file or an int8 file of
# the iris model, as this chapter writes them. `config.json` must hold exactly the
# constructor arguments, each of a sensible size; an index may only name shards inside
# its folder, all present; every file must hold exactly the tensors expected, of their
# shapes; an adapter nothing of the base it would silently replace; an int8 file loads
# with nothing allowlisted beyond torch's own but `Int8Tensor`. Anything else is refused
# in one line, exit status 2.
#
# **Reads** `OUT_DIR/iris-model.pth` (default `artifacts/`), written by chapter 2.
# **Writes** in `OUT_DIR/`: `iris-folder/` (by hand), `iris-hub-folder/` (by the mixin),
# `iris-shards/`, `tied.pth`, `tied.safetensors`, `iris-adapter.pth` and `iris-int8.pth`.
# safetensors comes with the `formats` extra, `huggingface_hub` with `realworld`, torchao
# with `quantize`; without one, the sections that need it say so in one line and skip.
#
# Next: chapter 10, `python distributed_checkpoint.py`, when one machine is not enough.

# %%
from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import tempfile
from pathlib import Path

# The command line first, before torch is imported: --help, a bad flag, a missing file and
# Ctrl-C are answered at once, in one line.
from support.cli import chapter_parser, fail, parse_chapter_args, prepare_out_dir, require_inputs, seed
from support.settings import MODEL_FILE, SEED, train_command

SYNTHETIC_LAYERS, SYNTHETIC_WIDTH = 8, 1024  # 8 float32 layers of 4 MiB: enough for memory to show
RANK = 2  # the adapter's rank: each layer learns a (out x RANK) @ (RANK x in) update
ADAPTER_EPOCHS = 5

parser = chapter_parser()
parser.add_argument(
    "--seed", type=seed, default=SEED, help=f"seeds the adapter and the tied model (default: {SEED})"
)
shared = parser.add_mutually_exclusive_group()
shared.add_argument("--folder", type=Path, help="check and load this shared folder, then stop")
shared.add_argument("--adapter", type=Path, help="check and load this adapter file, then stop")
shared.add_argument("--int8", type=Path, help="check and load this int8 file (needs torchao), then stop")
args = parse_chapter_args(parser)
require_inputs(args.out_dir / MODEL_FILE, made_by=train_command(args.out_dir))
for given in (args.folder, args.adapter, args.int8):
    if given is not None:
        require_inputs(given)

import torch
from torch import Tensor, nn

from build_model import Multiclass, accuracy, load_iris_split, same_state, seed_everything, train_one_epoch
from support.lab_tools import FRESH_PROCESS, make_memory_measurable, run_fresh_python, timed_with_peak_memory
from support.shared_models import (
    adapter_template,
    check_adapter_state,
    check_folder_config,
    read_safetensors,
    read_shard_index,
    read_with_exact_allowlist,
)
from support.untrusted_files import load_model_or_exit

try:
    from safetensors.torch import load_file, load_model, save_file, save_model
except ImportError:  # the optional `formats` extra
    save_file = None
try:
    from huggingface_hub import PyTorchModelHubMixin, load_torch_model, save_torch_state_dict
except ImportError:  # the optional `realworld` extra
    PyTorchModelHubMixin = None
# torchao 0.18 logs while it is imported (CUDA kernel libraries a CPU-only torch cannot load; torch's
# notice that it registers an Enum the old way): quiet for the import only.
quiet = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
for logger in quiet:
    logger.setLevel(logging.ERROR)
try:
    from torchao.quantization import Int8Tensor, Int8WeightOnlyConfig, quantize_
except ImportError:  # the optional `quantize` extra
    quantize_ = None
for logger in quiet:
    logger.setLevel(logging.NOTSET)

trained = load_model_or_exit(args.out_dir / MODEL_FILE, Multiclass, made_by=train_command(args.out_dir))
out_dir = prepare_out_dir(args.out_dir)
split = load_iris_split()
X_test, y_test = split.X_test, split.y_test
make_memory_measurable()

if args.folder is not None and save_file is None:
    fail("--folder needs safetensors (pip install safetensors, the formats extra)")
if args.folder is not None:  # a folder someone shared, read through the checks
    if (args.folder / "model.safetensors.index.json").exists():
        from_folder = Multiclass()
        from_folder.load_state_dict(read_shard_index(args.folder, from_folder))
    else:
        config = check_folder_config(args.folder / "config.json", trained.constructor_args())
        from_folder = Multiclass(**config)
        from_folder.load_state_dict(read_safetensors(args.folder / "model.safetensors", from_folder))
    print(f"{args.folder}: checked; test accuracy {accuracy(from_folder.eval(), X_test, y_test):.3f}")
    sys.exit(0)
if args.adapter is not None:
    checked_adapter = check_adapter_state(args.adapter, adapter_template(trained, RANK))
    print(f"{args.adapter}: checked, only the adapter's {len(checked_adapter)} tensors")
    sys.exit(0)
if args.int8 is not None:
    if quantize_ is None:
        fail("--int8 needs torchao (pip install torchao, the quantize extra)")
    template = Multiclass()
    quantize_(template, Int8WeightOnlyConfig())
    template.load_state_dict(read_with_exact_allowlist(args.int8, [Int8Tensor], template))
    print(
        f"{args.int8}: checked, loaded allowing only Int8Tensor; test accuracy "
        f"{accuracy(template.eval(), X_test, y_test):.3f}"
    )
    sys.exit(0)

# %% [markdown]
# ## 1. A folder others can load
#
# A state_dict needs your class *and* its constructor arguments. Write those arguments
# into `config.json` beside `model.safetensors`, and any program with the architecture
# (a library, not your training script) rebuilds the model: the layout Hugging Face uses.
# By hand it is a JSON dump and `save_file`; `PyTorchModelHubMixin`, added to the class,
# does the same with `save_pretrained`, reading the arguments from the constructor's
# signature, and `from_pretrained` rebuilds it. Then a program that cannot import this
# project (`fresh_process/load_model_folder.py`, run with `python -I`) rebuilds the model
# from the folder and predicts the 45 test flowers.

# %%
print("\n## 1. A folder others can load")
folder = out_dir / "iris-folder"
if save_file is None:
    print("skipped: needs safetensors (pip install safetensors, the formats extra)")
else:
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(trained.constructor_args(), indent=2) + "\n")
    save_file(trained.state_dict(), folder / "model.safetensors")
    print(f"By hand:      {sorted(p.name for p in folder.iterdir())}, config {trained.constructor_args()}")

    save_file({"inputs": X_test}, out_dir / "iris-test-inputs.safetensors")
    child = run_fresh_python(
        FRESH_PROCESS / "load_model_folder.py",
        folder.resolve(),
        (out_dir / "iris-test-inputs.safetensors").resolve(),
        (out_dir / "iris-test-outputs.safetensors").resolve(),
        cwd=out_dir,
        check=True,
    )
    fresh_outputs = load_file(out_dir / "iris-test-outputs.safetensors")["outputs"]
    with torch.no_grad():
        same = torch.equal(fresh_outputs, trained(X_test))
    (out_dir / "iris-test-inputs.safetensors").unlink()
    (out_dir / "iris-test-outputs.safetensors").unlink()
    print(f"Fresh process (python -I, no build_model.py): {child.stdout.split(': ')[-1].strip()}")
    print(f"  same outputs as the trained model: {same}")

if PyTorchModelHubMixin is None or save_file is None:
    print("PyTorchModelHubMixin: skipped, needs huggingface_hub (the realworld extra)")
else:

    class IrisNet(Multiclass, PyTorchModelHubMixin):  # the mixin adds save_pretrained, from_pretrained
        pass

    hub_model = IrisNet(**trained.constructor_args())
    hub_model.load_state_dict(trained.state_dict())
    hub_model.save_pretrained(out_dir / "iris-hub-folder")
    # from_pretrained prints "Loading weights from local directory": not this chapter's output
    with contextlib.redirect_stdout(io.StringIO()):
        rebuilt = IrisNet.from_pretrained(out_dir / "iris-hub-folder")
    names = sorted(p.name for p in (out_dir / "iris-hub-folder").iterdir())
    print(f"save_pretrained: {names}")
    print(
        f"from_pretrained: same tensors {same_state(rebuilt.state_dict(), trained.state_dict())}, "
        f"eval mode {not rebuilt.training}"
    )

# %% [markdown]
# ## 2. Tied weights
#
# A language model often reuses its input embedding's weight as its output layer's: one
# Parameter under two names. safetensors cannot say "these two names are one tensor", so
# `save_file` refuses the state_dict; `save_model` writes the tensor once, and `load_model`
# copies it into a model whose class ties the two again. `torch.save` keeps the tie by
# itself: its pickle records one storage for both names.
#
# To copy: `recipes/fix_safetensors_shared_tensors.py`.


# %%
class TiedModel(nn.Module):
    """Tokens -> embeddings -> scores over the same tokens, the output weight tied to the input."""

    def __init__(self, vocab: int = 10, dim: int = 8) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.output = nn.Linear(dim, vocab, bias=False)
        self.output.weight = self.embedding.weight  # tied: one Parameter under two names

    def forward(self, tokens: Tensor) -> Tensor:
        return self.output(self.embedding(tokens))  # (batch, vocab) scores


def one_storage(first: Tensor, second: Tensor) -> bool:
    return first.untyped_storage().data_ptr() == second.untyped_storage().data_ptr()


print("\n## 2. Tied weights")
seed_everything(args.seed)
tied = TiedModel()
torch.save(tied.state_dict(), out_dir / "tied.pth")
from_torch = torch.load(out_dir / "tied.pth", weights_only=True)
shared = one_storage(from_torch["output.weight"], from_torch["embedding.weight"])
print(f"torch.save / torch.load: 2 names, one storage after loading {shared}")
if save_file is None:
    print("safetensors: skipped, needs safetensors (pip install safetensors, the formats extra)")
else:
    try:
        save_file(tied.state_dict(), out_dir / "tied.safetensors")
    except RuntimeError as err:
        print(f"save_file(state_dict)  -> RuntimeError: {' '.join(str(err).split()).split(',')[0]}")
    save_model(tied, out_dir / "tied.safetensors")  # writes the shared tensor once
    fresh_tied = TiedModel()  # other random weights, tied by its class
    load_model(fresh_tied, out_dir / "tied.safetensors")
    print(
        f"save_model / load_model: same weights {same_state(fresh_tied.state_dict(), tied.state_dict())}, "
        f"one storage after loading {one_storage(fresh_tied.output.weight, fresh_tied.embedding.weight)}"
    )

# %% [markdown]
# ## 3. Shards with an index
#
# A large model is published as several files of at most `max_shard_size` bytes each, and
# `model.safetensors.index.json`, which says which file holds which tensor.
# `save_torch_state_dict` writes both; `load_torch_model` reads them back one shard at a
# time. Here the iris model gets a tiny `max_shard_size` so that it makes several shards.
# Reading one shard at a time matters for memory: loading a whole file needs all its
# tensors at once before they are copied into the model, loading shards needs one shard.
# The iris model (268 bytes) is far too small for that to show, so the memory is measured
# on a synthetic model of 8 layers of 4 MiB, as one file and as 4 MiB shards: the peak
# resident set of this process above where it started, while the load ran.

# %%
print("\n## 3. Shards with an index")
if PyTorchModelHubMixin is None or save_file is None:
    print("skipped: needs huggingface_hub and safetensors (the realworld and formats extras)")
else:
    shards = out_dir / "iris-shards"
    shards.mkdir(exist_ok=True)
    save_torch_state_dict(trained.state_dict(), shards, max_shard_size=100)  # bytes: one tensor a shard
    index = json.loads((shards / "model.safetensors.index.json").read_text())
    n_iris_shards = len(set(index["weight_map"].values()))
    print(f"save_torch_state_dict(max_shard_size=100): {n_iris_shards} shards + index")
    from_shards = Multiclass()
    load_torch_model(from_shards, shards)
    print(f"load_torch_model: same tensors {same_state(from_shards.state_dict(), trained.state_dict())}")

    def synthetic_model() -> nn.Sequential:
        return nn.Sequential(*[nn.Linear(SYNTHETIC_WIDTH, SYNTHETIC_WIDTH) for _ in range(SYNTHETIC_LAYERS)])

    synthetic = synthetic_model()
    with contextlib.ExitStack() as stack:
        big = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=out_dir)))
        save_file(synthetic.state_dict(), big / "model.safetensors")
        (big / "sharded").mkdir()
        save_torch_state_dict(synthetic.state_dict(), big / "sharded", max_shard_size="5MB")
        target = synthetic_model()
        one_file = big / "model.safetensors"
        _, _, one_file_mib = timed_with_peak_memory(lambda: target.load_state_dict(load_file(one_file)))
        _, _, sharded_mib = timed_with_peak_memory(lambda: load_torch_model(target, big / "sharded"))
        n_shards = len(list((big / "sharded").glob("*.safetensors")))
    size_mib = sum(t.numel() * t.element_size() for t in synthetic.state_dict().values()) / 2**20
    if one_file_mib is None or sharded_mib is None:
        print("Peak memory: not measurable on this system (it needs Linux's /proc)")
    else:
        print(
            f"Peak memory above the model, loading {size_mib:.0f} MiB: one file {one_file_mib:.0f} MiB, "
            f"{n_shards} shards {sharded_mib:.0f} MiB"
        )

# %% [markdown]
# ## 4. Only what changed: an adapter
#
# To adapt a trained model, freeze it and train a small low-rank update beside each Linear
# layer (LoRA): `W x + B (A x)`, with `A` (RANK x in) and `B` (out x RANK), `B` starting at
# zero so the adapted model starts exactly as the base. Only `A` and `B` train, and only
# they need saving: on a 4096-wide layer a rank-8 adapter is 0.4% of the weights. Loading
# it onto a freshly built base with `strict=False` must report the frozen base's keys as
# missing and nothing as unexpected. Merging (`W + B A`) gives a plain Multiclass again,
# whose outputs differ from the adapted model's only by float rounding, as the sum is done
# in another order.
#
# To copy: `recipes/save_only_adapter_weights.py`.


# %%
class LowRankAdapter(nn.Module):
    """A frozen Linear plus a trainable low-rank update of its weight."""

    def __init__(self, base: nn.Linear, rank: int = RANK) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features) * 0.1)
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + (x @ self.lora_a.T) @ self.lora_b.T


def with_adapters(base: Multiclass) -> Multiclass:
    base.hidden, base.output = LowRankAdapter(base.hidden), LowRankAdapter(base.output)
    return base


print("\n## 4. Only what changed: an adapter")
seed_everything(args.seed)
adapted = with_adapters(Multiclass())
for layer in ("hidden", "output"):
    getattr(adapted, layer).base.load_state_dict(getattr(trained, layer).state_dict())
trainable = [p for p in adapted.parameters() if p.requires_grad]
optimizer = torch.optim.Adam(trainable, lr=0.01)
for _ in range(ADAPTER_EPOCHS):
    train_one_epoch(adapted, optimizer, split.X_train, split.y_train)
adapted.eval()

adapter_state = {name: p.detach() for name, p in adapted.named_parameters() if p.requires_grad}
torch.save(adapter_state, out_dir / "iris-adapter.pth")
full_bytes = sum(t.numel() * t.element_size() for t in adapted.state_dict().values())
adapter_bytes = sum(t.numel() * t.element_size() for t in adapter_state.values())
whole_file = io.BytesIO()
torch.save(adapted.state_dict(), whole_file)  # what saving everything would write, for comparison
adapter_file_bytes = (out_dir / "iris-adapter.pth").stat().st_size
print(f"Adapter: {len(adapter_state)} tensors, {adapter_bytes} of the model's {full_bytes} tensor bytes")
print(
    f"File: {adapter_file_bytes} bytes, the whole adapted model's {whole_file.tell()} "
    f"({adapter_file_bytes / whole_file.tell():.2f}x: torch.save's fixed overhead dominates at this size)"
)

fresh_base = with_adapters(Multiclass())
for layer in ("hidden", "output"):
    getattr(fresh_base, layer).base.load_state_dict(getattr(trained, layer).state_dict())
result = fresh_base.load_state_dict(torch.load(out_dir / "iris-adapter.pth", weights_only=True), strict=False)
frozen = sorted(name for name, p in fresh_base.named_parameters() if not p.requires_grad)
assert sorted(result.missing_keys) == frozen and result.unexpected_keys == []
fresh_base.eval()
with torch.no_grad():
    same_adapted = torch.equal(fresh_base(X_test), adapted(X_test))
print(
    f"strict=False: missing = the frozen base's {len(frozen)} keys, unexpected none; "
    f"same outputs {same_adapted}"
)

merged = Multiclass()
with torch.no_grad():
    for layer in ("hidden", "output"):
        lora = getattr(adapted, layer)
        getattr(merged, layer).weight.copy_(lora.base.weight + lora.lora_b @ lora.lora_a)
        getattr(merged, layer).bias.copy_(lora.base.bias)
    merged.eval()
    difference = (merged(X_test) - adapted(X_test)).abs().max().item()
    same_classes = torch.equal(merged(X_test).argmax(1), adapted(X_test).argmax(1))
print(
    f"Merged into plain Linear weights: same predicted classes {same_classes}, "
    f"outputs within {difference:.1e} (float rounding)"
)

# %% [markdown]
# ## 5. Quantized weights
#
# torchao, the quantization library PyTorch points to (`torch.ao.quantization` is
# deprecated), installs for this torch and runs on a CPU: `quantize_` with
# `Int8WeightOnlyConfig` turns each Linear weight into an `Int8Tensor` (int8 values and a
# scale per row). Its state_dict saves with `torch.save`; to load it with
# `weights_only=True`, allow exactly the global the file needs beyond torch's own,
# `Int8Tensor`. Importing torchao allowlists some 40 globals for the whole process; the
# load below sets those aside and allows only what this file needs. An int8 weight takes a
# quarter of a float32's bytes, plus one float scale per row: on iris's short rows that is
# about 2x, and the file's fixed overhead (the pickle describing each Int8Tensor) outweighs
# the saving. On a real model the file shrinks close to 4x.
#
# To copy: `recipes/save_quantized_weights.py`.

# %%
print("\n## 5. Quantized weights")
if quantize_ is None:
    print("skipped: needs torchao (pip install torchao, the quantize extra)")
else:
    quantized = Multiclass()
    quantized.load_state_dict(trained.state_dict())
    quantize_(quantized, Int8WeightOnlyConfig())  # in place: each Linear weight becomes an Int8Tensor
    torch.save(quantized.state_dict(), out_dir / "iris-int8.pth")

    torch.serialization.clear_safe_globals()  # forget what importing torchao allowlisted
    needs = torch.serialization.get_unsafe_globals_in_checkpoint(out_dir / "iris-int8.pth")
    with torch.serialization.safe_globals([Int8Tensor]):
        int8_state = torch.load(out_dir / "iris-int8.pth", weights_only=True)
    print(f"The file needs beyond torch's allowlist: {needs}")
    reloaded = Multiclass()
    quantize_(reloaded, Int8WeightOnlyConfig())  # the same structure as the saved one
    reloaded.load_state_dict(int8_state)
    reloaded.eval()
    with torch.no_grad():
        same_int8 = torch.equal(reloaded(X_test), quantized(X_test))
    float_size = (out_dir / MODEL_FILE).stat().st_size
    int8_size = (out_dir / "iris-int8.pth").stat().st_size
    print(f"Loaded back with weights_only=True: same outputs {same_int8}")
    weight_bytes = sum(getattr(trained, layer).weight.nbytes for layer in ("hidden", "output"))
    int8_bytes = sum(
        (w := getattr(quantized, layer).weight).qdata.nbytes + w.scale.nbytes
        for layer in ("hidden", "output")
    )
    ratio = weight_bytes / int8_bytes
    print(f"Weights: float {weight_bytes} bytes, int8 with scales {int8_bytes} bytes ({ratio:.1f}x smaller)")
    print(
        f"File: float {float_size} bytes, int8 {int8_size} bytes (the pickles of the Int8Tensors weigh more)"
    )
    float_accuracy, int8_accuracy = accuracy(trained, X_test, y_test), accuracy(reloaded, X_test, y_test)
    print(f"Test accuracy: float {float_accuracy:.3f}, int8 {int8_accuracy:.3f}")
