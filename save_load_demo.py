"""Chapter 4: saving and loading the trained model -- pickle, torch.save, and the whole model.

Four ways through the same trained weights, each checked for identical predictions:
1. pickle the state_dict;
2. `torch.save` the state_dict and load it with `weights_only=True` (the recommended way);
3. pickle the whole model object, the article's pitfall, shown failing in a fresh Python
   process exactly as readers meet it, and the two ways out;
4. the complete load-and-predict program the article ends with, corrected.

Run (after `python train_iris.py`):

    python save_load_demo.py

Reads OUT_DIR/iris-model.pth (default artifacts/iris-model.pth). Writes demo-state.pickle,
demo-state.pth, demo-whole-model-main.pth and demo-whole-model.pth into OUT_DIR.
"""

from __future__ import annotations

import argparse
import inspect
import json
import pickle
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from build_model import (
    MODEL_FILE,
    SPECIES,
    Multiclass,
    chapter_parser,
    heading,
    load_iris_split,
    load_model_or_exit,
    prepare_out_dir,
    same_outputs,
    same_state,
)

N_FLOWERS_SHOWN = 5  # predictions printed in section 4


# %%
# # 1. pickle
#
# A state_dict is an ordinary Python dict of tensors, so `pickle` can store it. Loading it
# back into a fresh Multiclass gives the trained model. But `pickle.load` runs whatever
# code the file tells it to: use it only on files you made yourself.


def pickle_round_trip(model: Multiclass, path: Path) -> Multiclass:
    with path.open("wb") as f:
        pickle.dump(model.state_dict(), f)
    with path.open("rb") as f:
        state = pickle.load(f)  # runs code from the file: trusted files only
    restored = Multiclass()
    restored.load_state_dict(state)
    return restored


# %%
# # 2. torch.save and torch.load(weights_only=True)
#
# `torch.save` writes a zip archive: a small pickle that describes the dict (`data.pkl`) and
# one raw file per tensor under `data/`. `torch.load(..., weights_only=True)`, the default
# since PyTorch 2.6, rebuilds only tensors and plain containers and refuses anything else,
# so it is safe on files you did not make.


def torch_round_trip(model: Multiclass, path: Path) -> Multiclass:
    torch.save(model.state_dict(), path)
    restored = Multiclass()
    restored.load_state_dict(torch.load(path, weights_only=True))
    return restored


def zip_members(path: Path) -> list[str]:
    """The archive's members, without the folder every member sits in."""
    with zipfile.ZipFile(path) as archive:
        return [name.split("/", 1)[1] for name in archive.namelist()]


# %%
# # 3. The pitfall: pickling the whole model
#
# `torch.save(model)` pickles the object, and a pickle does not store a class, only the
# name to import it by. The article defines Multiclass in the script it runs, so the name
# recorded is `__main__.Multiclass`, and any other program that loads the file must have a
# `Multiclass` in *its own* `__main__`. We reproduce that for real: a child Python process
# defines the class in its `__main__` (the very source of `build_model.Multiclass`) and
# saves the whole model; a second, fresh process that does not define it tries to load it.

SAVE_AS_ARTICLE_DOES = (
    "import sys\nimport torch\nfrom torch import Tensor, nn\n\n"
    + inspect.getsource(Multiclass)
    + "\nmodel = Multiclass()\n"
    "model.load_state_dict(torch.load(sys.argv[1], weights_only=True))\n"
    "torch.save(model, sys.argv[2])  # the whole model: records __main__.Multiclass\n"
)

LOAD_IN_FRESH_PROCESS = """\
import json, sys, torch

def attempt(**kwargs):
    try:
        torch.load(sys.argv[1], **kwargs)
    except Exception as err:
        return {"error": type(err).__name__, "message": str(err)}
    return {"error": None, "message": ""}

print(json.dumps({
    "torch.load(path)": attempt(),
    "torch.load(path, weights_only=False)": attempt(weights_only=False),
}))
"""


@dataclass(frozen=True)
class LoadOutcome:
    call: str
    error: str | None  # exception type name, or None when the load succeeded
    message: str

    def summary(self) -> str:
        if self.error is None:
            return "loaded"
        lines = self.message.splitlines() or [""]
        key_line = next((line for line in lines if "Unsupported global" in line), lines[0])
        first_sentence = key_line.strip().split(". ")[0]
        return f"{self.error}: {first_sentence}"


def run_python(code: str, *args: Path, cwd: Path) -> str:
    """Run `code` in a new, isolated Python process (it cannot import this project)."""
    result = subprocess.run(
        [sys.executable, "-I", "-c", code, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"child Python process failed:\n{result.stderr}")
    return result.stdout


def save_whole_model_as_article_does(state_path: Path, whole_path: Path) -> None:
    run_python(SAVE_AS_ARTICLE_DOES, state_path.resolve(), whole_path.resolve(), cwd=whole_path.parent)


def load_in_fresh_process(whole_path: Path) -> list[LoadOutcome]:
    stdout = run_python(LOAD_IN_FRESH_PROCESS, whole_path.resolve(), cwd=whole_path.parent)
    results = json.loads(stdout)
    return [LoadOutcome(call, result["error"], result["message"]) for call, result in results.items()]


# %%
# ## The ways out
#
# Best: save the state_dict (sections 1 and 2). The file then needs no class at all.
#
# For a whole-model file you trust: save it from code that *imports* the class from a
# module, so the file records an importable name (`build_model.Multiclass`), then allowlist
# that class and the layers it holds with `torch.serialization.safe_globals`, and keep
# `weights_only=True`. `get_unsafe_globals_in_checkpoint` lists what needs allowlisting
# without loading anything. An article-style file can be rescued the same way by giving
# the allowlist the name the file was saved under.

LAYER_CLASSES = [nn.Linear, nn.ReLU, nn.LogSoftmax]


def unsafe_globals(path: Path) -> list[str]:
    """What `weights_only=True` would refuse in `path`, found without loading it."""
    return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))


def load_whole_model(path: Path, saved_as: str | None = None) -> Multiclass:
    """Load a trusted whole-model file, allowlisting Multiclass (under `saved_as` if given)."""
    allowed = [(Multiclass, saved_as) if saved_as else Multiclass, *LAYER_CLASSES]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, weights_only=True)


# %%
# # 4. The complete load-and-predict program
#
# The article ends with a program that loads the model and predicts. Corrected: it uses
# `torch.load` with `weights_only=True` rather than pickle (as the article's own comments
# advise), recreates the *same* train/test split instead of a new random one, and predicts
# in eval mode without autograd. These lines are all a separate program needs.


def predict_species(model_path: Path) -> tuple[float, list[tuple[list[float], str, str]]]:
    """Accuracy on the test set, and (measurements, predicted, actual) for a few flowers."""
    model = Multiclass()
    model.load_state_dict(torch.load(model_path, weights_only=True))
    model.eval()
    split = load_iris_split()  # same seed, same split as in training
    with torch.no_grad():
        predicted = model(split.X_test).argmax(dim=1)  # (45,) class indices
    test_accuracy = (predicted == split.y_test).float().mean().item()
    examples = [
        (split.X_test[i].tolist(), SPECIES[predicted[i]], SPECIES[split.y_test[i]])
        for i in range(N_FLOWERS_SHOWN)
    ]
    return test_accuracy, examples


def report_round_trip(label: str, original: nn.Module, restored: nn.Module, X: Tensor) -> None:
    tensors = same_state(original.state_dict(), restored.state_dict())
    print(f"{label}: same tensors {tensors}, same predictions {same_outputs(original, restored, X)}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return chapter_parser(__doc__).parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model_path = args.out_dir / MODEL_FILE
    trained = load_model_or_exit(model_path)
    out_dir = prepare_out_dir(args.out_dir)
    X_test = load_iris_split().X_test

    heading("1. pickle")
    restored = pickle_round_trip(trained, out_dir / "demo-state.pickle")
    report_round_trip("pickle.dump / pickle.load", trained, restored, X_test)
    print("Warning: pickle.load runs code stored in the file. Never use it on files from others.")

    heading("2. torch.save / torch.load(weights_only=True)")
    torch_path = out_dir / "demo-state.pth"
    restored = torch_round_trip(trained, torch_path)
    print(f"{torch_path} is a zip archive of: {', '.join(zip_members(torch_path))}")
    report_round_trip("torch.save / torch.load", trained, restored, X_test)

    heading("3. Pickling the whole model")
    article_path = out_dir / "demo-whole-model-main.pth"
    save_whole_model_as_article_does(model_path, article_path)
    print(f"{article_path} was saved by a script that defines Multiclass, as in the article.")
    print(f"It refers to: {unsafe_globals(article_path)}")
    print("Loading it in a fresh Python process that does not define Multiclass:")
    for outcome in load_in_fresh_process(article_path):
        print(f"  {outcome.call:<37} -> {outcome.summary()}")

    importable_path = out_dir / "demo-whole-model.pth"
    torch.save(trained, importable_path)
    needed = unsafe_globals(importable_path)
    print(f"Saved from code that imports the class, {importable_path} needs: {needed}")
    whole = load_whole_model(importable_path)
    print(
        f"  torch.load inside safe_globals([Multiclass, ...]): {type(whole).__name__}, "
        f"same predictions {same_outputs(trained, whole, X_test)}"
    )
    rescued = load_whole_model(article_path, saved_as="__main__.Multiclass")
    print(
        f"  the article's file, allowlisted as '__main__.Multiclass': "
        f"same predictions {same_outputs(trained, rescued, X_test)}"
    )

    heading("4. Load and predict")
    test_accuracy, examples = predict_species(model_path)
    print(f"Accuracy: {test_accuracy:.2f}")
    for measurements, predicted, actual in examples:
        flower = ", ".join(f"{value:.1f}" for value in measurements)
        print(f"  [{flower}] -> {predicted:<10} (actual: {actual})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
