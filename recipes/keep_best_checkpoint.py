"""My saved "best" model is really the last one: `best = model.state_dict()` does not keep the best weights.

model.state_dict() returns the model's own tensors, not copies. Kept in a variable when the
validation loss is lowest, they go on changing with every later optimizer step, so at the end
"best" holds the final weights, and the file saved from it reproduces the final loss, not the best.

Fix: copy the tensors at the moment they are best:
`best = {k: v.detach().clone() for k, v in model.state_dict().items()}`, and save that.

Run: python keep_best_checkpoint.py
Needs: torch
Chapter: inspect_state.py, "The trap: state_dict() returns references, not copies"
"""

import math
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


workdir = tempfile.TemporaryDirectory()  # removed at the end, or at exit if the script stops early
folder = Path(workdir.name)
torch.manual_seed(0)
X = torch.randn(120, 4)
y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()  # learnable: 3 classes from two measurements
y = torch.where(torch.rand(120) < 0.3, torch.randint(0, 3, (120,)), y)  # 30% noisy labels: it overfits
X_train, y_train, X_val, y_val = X[:90], y[:90], X[90:], y[90:]


def val_loss(model: nn.Module) -> float:
    """The validation measure that picks the best model."""
    with torch.no_grad():
        return nn.functional.nll_loss(model(X_val), y_val).item()


def train(copy: bool) -> tuple[Multiclass, dict[str, torch.Tensor], float, int]:
    """60 full-batch Adam steps, remembering the weights with the lowest validation loss."""
    torch.manual_seed(1)  # both runs start from the same weights
    model = Multiclass()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    best, best_loss, best_step = {}, math.inf, 0
    for step in range(1, 61):
        optimizer.zero_grad()
        nn.functional.nll_loss(model(X_train), y_train).backward()
        optimizer.step()
        if (loss := val_loss(model)) < best_loss:
            best_loss, best_step = loss, step
            if copy:  # THE FIX: a snapshot of this moment (copy.deepcopy(model.state_dict()) works too)
                best = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:  # THE PROBLEM: the live tensors, which the next optimizer.step() changes in place
                best = model.state_dict()
    return model, best, best_loss, best_step


def loss_of_file(best: dict[str, torch.Tensor]) -> float:
    """Save `best`, load it into a fresh model with weights_only=True, and measure it."""
    torch.save(best, folder / "best.pth")
    fresh = Multiclass()
    fresh.load_state_dict(torch.load(folder / "best.pth", weights_only=True))
    return val_loss(fresh)


model, best, best_loss, best_step = train(copy=False)
saved_loss = loss_of_file(best)
print(f"problem: best val loss {best_loss:.4f} at step {best_step}; the saved best scores {saved_loss:.4f}")
print(f"problem: the final model scores {val_loss(model):.4f}: the saved 'best' is the last model")
assert all(torch.equal(best[k], v) for k, v in model.state_dict().items()) and saved_loss != best_loss

model, best, best_loss, best_step = train(copy=True)
saved_loss = loss_of_file(best)
print(f"fixed: the saved best scores {saved_loss:.4f}, the loss at step {best_step}")
assert saved_loss == best_loss  # exactly the best validation loss, not approximately
assert not torch.equal(best["hidden.weight"], model.hidden.weight)  # and not the final weights
workdir.cleanup()
print("ok: the saved best checkpoint reproduces the best validation loss exactly")
