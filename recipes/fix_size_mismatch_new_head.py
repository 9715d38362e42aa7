"""size mismatch for output.weight: copying a param with shape torch.Size([3, 8]) from checkpoint, the shape
in current model is torch.Size([4, 8]) (warm-starting or fine-tuning with another number of classes).

The checkpoint's output layer was trained for 3 classes; the new model has 4. load_state_dict refuses
a tensor of the wrong shape, and strict=False does not help: it forgives missing or unexpected names,
never shapes. Keep what fits, and check exactly which keys were left out rather than ignoring them.

Fix: drop the entries whose shape differs, load with strict=False, and assert that missing_keys is
exactly the new head and unexpected_keys is empty.

Run: python fix_size_mismatch_new_head.py
Needs: torch
Chapter: load_tips.py, "3. Warm-starting a different model"
"""

import tempfile
from pathlib import Path

import torch
from torch import nn


class Multiclass(nn.Module):
    """The article's iris network, with the number of classes as an argument: 4 -> 8 hidden -> n_classes."""

    def __init__(self, n_classes: int = 3) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 8)
        self.act = nn.ReLU()
        self.output = nn.Linear(8, n_classes)
        self.logsoftmax = nn.LogSoftmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logsoftmax(self.output(self.act(self.hidden(x))))


workdir = tempfile.TemporaryDirectory()  # removed at the end, or at exit if the script stops early
folder = Path(workdir.name)
torch.manual_seed(0)
torch.save(Multiclass(n_classes=3).state_dict(), folder / "three-classes.pth")
state = torch.load(folder / "three-classes.pth", weights_only=True)

# The problem: the old head does not fit, with strict=False too. (A failed load still copies the
# tensors that fit before it raises, so each try here gets a throwaway model.)
for strict in (True, False):
    try:
        Multiclass(n_classes=4).load_state_dict(state, strict=strict)
    except RuntimeError as err:
        said = "size mismatch for output.weight: copying a param with shape torch.Size([3, 8])"
        assert said in str(err) and "current model is torch.Size([4, 8])" in str(err), str(err)
        print(f"problem: strict={strict}: {type(err).__name__}: {said} from checkpoint ...")
    else:
        raise AssertionError(f"a 3-class head loaded into a 4-class model with strict={strict}")

# The fix: keep the entries whose name and shape fit, load them, and check exactly what was left out.
new_model = Multiclass(n_classes=4)
fresh_head = {key: value.clone() for key, value in new_model.output.state_dict().items()}  # for the proof
target = new_model.state_dict()
fits = {key: value for key, value in state.items() if key in target and value.shape == target[key].shape}
result = new_model.load_state_dict(fits, strict=False)
print(f"loaded {sorted(fits)}; missing_keys {sorted(result.missing_keys)}")
assert set(result.missing_keys) == {"output.weight", "output.bias"}, result.missing_keys
assert result.unexpected_keys == [], result.unexpected_keys

assert torch.equal(new_model.hidden.weight, state["hidden.weight"])
assert torch.equal(new_model.hidden.bias, state["hidden.bias"])
assert all(torch.equal(new_model.output.state_dict()[key], value) for key, value in fresh_head.items())
workdir.cleanup()
print("ok: the hidden layer equals the checkpoint's, the new 4-class head is untouched and exactly missing")
