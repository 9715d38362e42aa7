"""How much does training cost on top of starting Python with torch and scikit-learn?

Every training script pays a floor before its first step (see benchmarks/floor.py). This
benchmark times whole processes -- the floor, `train_iris.py` with its default settings and
the article's own training script -- alternately, by CPU time (user + sys), and reports the
median of each and their ratios. A shared machine is noisy: compare the ratios, not the
seconds.

    python benchmarks/train_vs_floor.py [--rounds 7]

Writes only into a temporary folder.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from floor import FLOOR_COMMAND, REPO, measure, rounds_parser

# The article's own training script, as published (its `len(X)` batch loop included), saving
# its state_dict at the end: what chapter 2 is measured against.
ARTICLE = """
import torch
import torch.nn as nn
import torch.optim as optim
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split

data = load_iris()
X, y = data.data, data.target
X_train, X_test, y_train, y_test = train_test_split(X, y, train_size=0.7, shuffle=True)
X_train = torch.tensor(X_train, dtype=torch.float32)
y_train = torch.tensor(y_train, dtype=torch.long)
X_test = torch.tensor(X_test, dtype=torch.float32)
y_test = torch.tensor(y_test, dtype=torch.long)


class Multiclass(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(4, 8)
        self.act = nn.ReLU()
        self.output = nn.Linear(8, 3)
        self.logsoftmax = nn.LogSoftmax(dim=1)

    def forward(self, x):
        x = self.act(self.hidden(x))
        x = self.logsoftmax(self.output(x))
        return x


model = Multiclass()
loss_fn = nn.NLLLoss()
optimizer = optim.Adam(model.parameters(), lr=0.001)
n_epochs = 100
batch_size = 5
for epoch in range(n_epochs):
    for i in range(0, len(X), batch_size):
        Xbatch = X_train[i:i + batch_size]
        y_pred = model(Xbatch)
        ybatch = y_train[i:i + batch_size]
        loss = loss_fn(y_pred, ybatch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
y_pred = model(X_test)
acc = (torch.argmax(y_pred, 1) == y_test).float().mean()
print("Accuracy: %.2f" % acc)
torch.save(model.state_dict(), "iris-model.pth")
"""


def main(argv: list[str] | None = None) -> int:
    args = rounds_parser(__doc__.splitlines()[0], default=7).parse_args(argv)

    commands = {
        "floor (imports + one optimizer)": FLOOR_COMMAND,
        "train_iris.py (defaults)": [sys.executable, str(REPO / "train_iris.py")],
        "train_iris.py --epochs 1": [sys.executable, str(REPO / "train_iris.py"), "--epochs", "1"],
        "the article's training script": [sys.executable, "-c", ARTICLE],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.rounds):
            for name, command in commands.items():
                times[name].append(measure(command, Path(scratch)).cpu)

    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, median in medians.items():
        print(f"{name:<34} median {median:6.2f} s of CPU  (min {min(times[name]):.2f} s)")
    floor, train, one_epoch, article = medians.values()
    print(f"ratio train_iris.py / floor: {train / floor:.2f}x over {args.rounds} rounds")
    print(f"ratio train_iris.py / the article's script: {train / article:.2f}x")
    rest = (train - one_epoch) / floor
    print(f"of which fixed costs (1 epoch): {one_epoch / floor:.2f}x, the other 99 epochs: {rest:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
