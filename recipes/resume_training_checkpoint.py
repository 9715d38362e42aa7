"""Save a training checkpoint and resume later so that the run ends exactly as if it never stopped.

A state_dict alone restarts Adam from zero moments and the shuffling from a new order, so the
resumed run drifts away from the uninterrupted one. A checkpoint also needs the optimizer's
state, the epoch, and the state of every random number generator the loop draws from: here the
global one (dropout's masks) and the shuffle's own.

Fix: save {"epoch", model, optimizer, torch RNG, generator state} in one dict; to resume, build a
fresh model and optimizer, load both state_dicts, restore both generators, go on from epoch + 1.

Run: python resume_training_checkpoint.py
Needs: torch
Chapter: checkpoint_resume.py, "What a checkpoint holds" and "Resuming: the official recipe"
"""

import tempfile
from pathlib import Path

import torch
from torch import nn


class Multiclass(nn.Module):
    """The article's iris network, with dropout: its masks come from torch's global generator."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 8)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(0.2)  # a new random mask at every training step
        self.output = nn.Linear(8, 3)
        self.logsoftmax = nn.LogSoftmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logsoftmax(self.output(self.dropout(self.act(self.hidden(x)))))


workdir = tempfile.TemporaryDirectory()  # removed at the end, or at exit if the script stops early
folder = Path(workdir.name)
torch.manual_seed(0)
X = torch.randn(120, 4)
y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()  # a learnable rule: 3 classes
EPOCHS, STOP_AFTER = 6, 3


def fresh_run() -> tuple[Multiclass, torch.optim.Adam, torch.Generator]:
    torch.manual_seed(1)  # the same initial weights for both runs
    model = Multiclass()
    return model, torch.optim.Adam(model.parameters(), lr=0.01), torch.Generator().manual_seed(2)


def train(model: Multiclass, optimizer: torch.optim.Adam, shuffle: torch.Generator, epochs: range) -> None:
    for _ in epochs:
        for batch in torch.randperm(len(X), generator=shuffle).split(20):  # a new order every epoch
            optimizer.zero_grad()
            nn.NLLLoss()(model(X[batch]), y[batch]).backward()
            optimizer.step()


straight = fresh_run()
train(*straight, range(EPOCHS))

# The task: train for a while, then save everything the rest of the run depends on.
model, optimizer, shuffle = fresh_run()
train(model, optimizer, shuffle, range(STOP_AFTER))
checkpoint = {
    "epoch": STOP_AFTER,
    "model_state_dict": model.state_dict(),
    "optimizer_state_dict": optimizer.state_dict(),
    "torch_rng_state": torch.get_rng_state(),  # the global generator: the dropout masks
    "shuffle_state": shuffle.get_state(),  # where the next epoch's shuffle starts
}
torch.save(checkpoint, folder / "checkpoint.pth")
del model, optimizer, shuffle, checkpoint  # as if the process had ended

# Resume: fresh objects, then every state loaded into them (the optimizer built over the new model).
checkpoint = torch.load(folder / "checkpoint.pth", weights_only=True)
model = Multiclass()
model.load_state_dict(checkpoint["model_state_dict"])
optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
torch.set_rng_state(checkpoint["torch_rng_state"])  # last: building the model drew random numbers
shuffle = torch.Generator()
shuffle.set_state(checkpoint["shuffle_state"])
train(model, optimizer, shuffle, range(checkpoint["epoch"], EPOCHS))
print(f"resumed at epoch {checkpoint['epoch']} of {EPOCHS}")

expected_model, expected_optimizer = straight[0].state_dict(), straight[1].state_dict()
assert model.state_dict().keys() == expected_model.keys()
assert all(torch.equal(tensor, expected_model[name]) for name, tensor in model.state_dict().items())
state, expected_state = optimizer.state_dict()["state"], expected_optimizer["state"]
assert state.keys() == expected_state.keys()
for index, per_param in state.items():
    assert per_param.keys() == expected_state[index].keys()
    assert all(torch.equal(per_param[key], expected_state[index][key]) for key in per_param)
assert optimizer.state_dict()["param_groups"] == expected_optimizer["param_groups"]
assert torch.equal(shuffle.get_state(), straight[2].get_state())
workdir.cleanup()
print("ok: the resumed run ends with every parameter and optimizer state tensor equal to the straight run")
