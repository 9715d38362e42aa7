"""Save the whole model the way the article does: from a script that defines Multiclass itself.

Chapter 4 (save_load_demo.py) runs this program in a fresh Python process:

    python -I save_whole_model.py WEIGHTS_FILE WHOLE_MODEL_FILE

The class is defined here, in the script that is run, so it lives in the module `__main__`.
`torch.save(model)` pickles the object, and a pickle stores a class only by the name to
import it by: the file records `__main__.Multiclass`. Any program that loads it must then
have a `Multiclass` in *its own* `__main__`.
"""

import argparse
from pathlib import Path
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage and error
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


parser = OneLineParser(description="Save the whole model from a script that defines Multiclass itself.")
parser.add_argument("weights_file", help="the trained state_dict to load")
parser.add_argument("whole_model_file", help="where to torch.save the whole model object")
args = parser.parse_args()
if not Path(args.weights_file).is_file():
    parser.exit(2, f"error: {args.weights_file} is not a file\n")

import torch  # after the command line, which needs no torch
from torch import nn


class Multiclass(nn.Module):  # the article's class, defined in the script it runs
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


weights_file, whole_model_file = args.weights_file, args.whole_model_file
model = Multiclass()
model.load_state_dict(torch.load(weights_file, weights_only=True))
torch.save(model, whole_model_file)  # the whole object: the file records __main__.Multiclass
print(f"Saved the whole model, class {type(model).__module__}.{type(model).__name__}")
