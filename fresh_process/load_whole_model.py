"""Load a whole-model file in a fresh Python process that does not define Multiclass.

Chapter 4 (save_load_demo.py) runs this program in a fresh Python process:

    python -I load_whole_model.py WHOLE_MODEL_FILE

with a file that save_whole_model.py has just written into a folder only this user can
enter. It makes the two calls a reader of the article would make, and prints how each fails.
"""

import argparse
from pathlib import Path
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage and error
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


parser = OneLineParser(
    description="Load a whole-model file without defining its class, and say how it fails."
)
parser.add_argument("whole_model_file", help="a file written by torch.save(model), trusted: it may run code")
whole_model_file = parser.parse_args().whole_model_file
if not Path(whole_model_file).is_file():
    parser.exit(2, f"error: {whole_model_file} is not a file\n")

import torch  # after the command line, which needs no torch


def reason(err: Exception) -> str:
    """The exception's type, and the first sentence of the line of its message that matters."""
    message = str(err).replace(__file__, "load_whole_model.py")  # this program's path, shortened
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    line = next((line for line in lines if "Unsupported global" in line), lines[0])
    return f"{type(err).__name__}: {line.split('. ')[0]}"


try:
    torch.load(whole_model_file)  # weights_only=True, the default since PyTorch 2.6
    print("torch.load(path)                      -> loaded")
except Exception as err:
    print(f"torch.load(path)                      -> {reason(err)}")

try:
    # weights_only=False runs whatever the file's pickle says: only for a file you trust.
    # This one was written a moment ago by save_whole_model.py, in a private folder.
    torch.load(whole_model_file, weights_only=False)
    print("torch.load(path, weights_only=False)  -> loaded")
except Exception as err:
    print(f"torch.load(path, weights_only=False)  -> {reason(err)}")
