"""Save the whole model the way the article does: from a script that defines Multiclass itself.

Chapter 4 (save_load_demo.py) runs this program in a fresh Python process:

    python -I save_whole_model.py WEIGHTS_FILE WHOLE_MODEL_FILE

The class is defined here, in the script that is run, so it lives in the module `__main__`.
`torch.save(model)` pickles the object, and a pickle stores a class only by the name to
import it by: the file records `__main__.Multiclass`. Any program that loads it must then
have a `Multiclass` in *its own* `__main__`.
"""

import sys

import torch
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


weights_file, whole_model_file = sys.argv[1], sys.argv[2]
model = Multiclass()
model.load_state_dict(torch.load(weights_file, weights_only=True))
torch.save(model, whole_model_file)  # the whole object: the file records __main__.Multiclass
print(f"Saved the whole model, class {type(model).__module__}.{type(model).__name__}")
