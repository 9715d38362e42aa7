"""RuntimeError: Attempting to deserialize object on a CUDA device but torch.cuda.is_available() is False.

torch.save records each tensor's device in the file ("cuda:0" for a tensor on the first GPU) and
torch.load puts it back there, which fails on a machine without one. Without a GPU this recipe
writes that same file with torch.serialization.register_package: a tagger that marks only our
storages "cuda:0", exactly as torch's own CUDA tagger would; with a GPU it saves real cuda tensors.

Fix: torch.load(path, map_location="cpu", weights_only=True), or map_location=device to load
straight onto the device you will use.

Run: python load_gpu_checkpoint_on_cpu.py
Needs: torch
Chapter: load_tips.py, "1. A file saved on another device: map_location"
"""

import tempfile
from pathlib import Path

import torch
from torch import nn


class Multiclass(nn.Module):
    """The article's iris network: 4 measurements -> 8 hidden units -> 3 log-probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 8)
        self.act = nn.ReLU()
        self.output = nn.Linear(8, 3)
        self.logsoftmax = nn.LogSoftmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logsoftmax(self.output(self.act(self.hidden(x))))


def storage_locations(path: Path) -> set[str]:
    """The device torch.save wrote for each storage: torch.load hands it to a map_location function."""
    found: set[str] = set()

    def record(storage: torch.UntypedStorage, location: str) -> torch.UntypedStorage:
        found.add(location)
        return storage  # as read from the file: on the cpu

    torch.load(path, map_location=record, weights_only=True)
    return found


gpu_storages: set[int] = set()  # the storages (by address) to tag "cuda:0"; empty: the tagger does nothing
torch.serialization.register_package(
    0,  # asked before torch's own taggers (cpu is 10); None lets them decide
    lambda storage: "cuda:0" if storage.data_ptr() in gpu_storages else None,
    lambda storage, location: None,  # loading is left to torch's deserializers
)

workdir = tempfile.TemporaryDirectory()  # removed at the end, or at exit if the script stops early
folder = Path(workdir.name)
torch.manual_seed(0)
state = Multiclass().state_dict()
path = folder / "saved-on-gpu.pth"
if torch.cuda.is_available():
    torch.save({name: tensor.to("cuda:0") for name, tensor in state.items()}, path)  # for real
else:
    gpu_storages.update(tensor.untyped_storage().data_ptr() for tensor in state.values())
    torch.save(state, path)  # the bytes a GPU machine writes for these tensors
    gpu_storages.clear()  # from here on torch.save tags as usual
assert storage_locations(path) == {"cuda:0"}
torch.save(state, folder / "plain.pth")
assert storage_locations(folder / "plain.pth") == {"cpu"}  # the tagger does not leak into later saves

try:
    torch.load(path, weights_only=True)
except RuntimeError as err:
    print(f"problem: {type(err).__name__}: {str(err).split('. ')[0]}")
    assert "torch.cuda.is_available() is False" in str(err) and "map_location" in str(err)
else:  # torch.load put the tensors back on the GPU
    assert torch.cuda.is_available(), "without a GPU, torch.load of a cuda:0 file should fail"
    print("problem: none on this machine: it has a GPU, and torch.load put the tensors back on cuda:0")

# The fix: say where the tensors go.
loaded = torch.load(path, map_location="cpu", weights_only=True)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
on_device = torch.load(path, map_location=device, weights_only=True)  # straight onto the device you use

assert loaded.keys() == state.keys() == on_device.keys()
assert all(tensor.device == torch.device("cpu") for tensor in loaded.values())
assert all(torch.equal(loaded[name], state[name]) for name in state)
assert all(tensor.device.type == device.type for tensor in on_device.values())
assert all(torch.equal(on_device[name].cpu(), state[name]) for name in state)
model = Multiclass()
model.load_state_dict(loaded)
workdir.cleanup()
print("ok: a file whose storages say cuda:0 loads with map_location onto the cpu, every tensor equal")
