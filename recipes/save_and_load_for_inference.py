"""Save a trained model for inference, then load it in another program and predict.

Save the state_dict (the names and tensors), not the whole model object: loading it needs
only torch and the model's class, never pickled code. The class is built again, the tensors
are copied in, and eval() plus no_grad() switch training behaviour and autograd off.

Fix: torch.save(model.state_dict(), path); later model = Multiclass(),
model.load_state_dict(torch.load(path, weights_only=True)), model.eval(), predict under torch.no_grad().

Run: python save_and_load_for_inference.py
Needs: torch
Chapter: save_load_demo.py, "4. The complete load-and-predict program"
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


workdir = tempfile.TemporaryDirectory()  # removed at the end, or at exit if the script stops early
folder = Path(workdir.name)
torch.manual_seed(0)
X = torch.randn(120, 4)
y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()  # a learnable rule: 3 classes

model = Multiclass()
optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
for _ in range(50):
    optimizer.zero_grad()
    nn.NLLLoss()(model(X), y).backward()
    optimizer.step()
model.eval()
with torch.no_grad():
    expected = model(X)

# The task: save the weights only ...
path = folder / "iris-model.pth"
torch.save(model.state_dict(), path)

# ... and, in the program that predicts, build the class and load them into it.
loaded = Multiclass()
loaded.load_state_dict(torch.load(path, weights_only=True))
loaded.eval()  # inference mode for dropout and batch norm layers (none here, but always call it)
with torch.no_grad():  # no autograd graph: faster, less memory
    log_probs = loaded(X)
predictions = log_probs.argmax(dim=1)
print(f"first predictions: {predictions[:8].tolist()}, accuracy {(predictions == y).float().mean():.2f}")

saved, restored = model.state_dict(), loaded.state_dict()
assert saved.keys() == restored.keys()
assert all(torch.equal(saved[name], restored[name]) for name in saved)
assert torch.equal(log_probs, expected)
assert torch.equal(predictions, expected.argmax(dim=1))
workdir.cleanup()
print("ok: the reloaded model has every tensor equal and predicts exactly as the trained one")
