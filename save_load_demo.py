# %% [markdown]
# # Chapter 4: saving and loading the trained model
#
# Four ways through the same trained weights, each checked for identical predictions:
# 1. pickle the state_dict;
# 2. `torch.save` the state_dict and load it with `weights_only=True` (the recommended way);
# 3. `torch.save` the whole model object, the article's pitfall, shown failing in a fresh
#    Python process exactly as readers meet it, and the ways out;
# 4. the complete load-and-predict program the article ends with, corrected.
#
#     python save_load_demo.py [--out-dir artifacts]
#
# **Reads** `OUT_DIR/iris-model.pth` (default `artifacts/`), written by chapter 2.
# **Writes** into OUT_DIR, for you to try: `demo-state.pth` (section 2),
# `demo-whole-model-main.pth` (the whole model saved as the article does, section 3) and
# `demo-whole-model.pth` (saved from code that imports the class). The files loaded
# unsafely are written and read in a private temporary folder, removed afterwards. The two
# programs section 3 runs in fresh processes are real files to open and run:
# `fresh_process/save_whole_model.py` and `fresh_process/load_whole_model.py`.
#
# Next: chapter 5, `python checkpoint_resume.py`, checkpoints that resume exactly.

# %%
from __future__ import annotations

import io
import pickle
import shutil
import zipfile

# The command line first, before torch is imported: --help, a bad flag, a missing file and
# Ctrl-C are answered at once, in one line.
from support.cli import chapter_parser, parse_chapter_args, prepare_out_dir, require_inputs
from support.settings import MODEL_FILE, SPECIES, train_command

N_FLOWERS_SHOWN = 5  # predictions printed in section 4

args = parse_chapter_args(chapter_parser())
model_path = args.out_dir / MODEL_FILE
require_inputs(model_path, made_by=train_command(args.out_dir))

import torch
from torch import nn

from build_model import Multiclass, load_iris_split, same_outputs, same_state
from support.lab_tools import FRESH_PROCESS, private_folder, run_fresh_python
from support.untrusted_files import load_model_or_exit

trained = load_model_or_exit(model_path, Multiclass, made_by=train_command(args.out_dir))
out_dir = prepare_out_dir(args.out_dir)
X_test = load_iris_split().X_test

# %% [markdown]
# ## 1. pickle
#
# A state_dict is an ordinary Python dict of tensors, so `pickle` can store it, and loading
# it back into a fresh Multiclass gives the trained model. But `pickle.load` runs whatever
# code the file tells it to: use it only on a file you have just made yourself. Here that
# file lives in a private temporary folder, so nobody else can swap it in between.

# %%
print("\n## 1. pickle")
with private_folder() as private:
    pickle_path = private / "demo-state.pickle"
    with pickle_path.open("wb") as f:
        pickle.dump(trained.state_dict(), f)
    with pickle_path.open("rb") as f:
        state = pickle.load(f)  # runs code from the file: only for files you made

from_pickle = Multiclass()
from_pickle.load_state_dict(state)
print(
    f"pickle.dump / pickle.load: same tensors {same_state(trained.state_dict(), from_pickle.state_dict())}, "
    f"same predictions {same_outputs(trained, from_pickle, X_test)}"
)
print("Warning: pickle.load runs code stored in the file. Never use it on files from others.")

# %% [markdown]
# ## 2. torch.save and torch.load(weights_only=True)
#
# Save the state_dict with `torch.save`, load it into a fresh model with `load_state_dict`.
# `torch.load(..., weights_only=True)`, the default since PyTorch 2.6, rebuilds only tensors
# and plain containers and refuses anything else, so it runs nothing from the file.
#
# The file is a zip archive: a small pickle that describes the dict (`data.pkl`), one raw
# record per *storage* under `data/`, and a few bookkeeping records. Each weight and bias
# here has a storage of its own, so there are four; tensors that share a storage, such as
# a weight and a view of one of its rows, are written once.

# %%
print("\n## 2. torch.save / torch.load(weights_only=True)")
state_path = out_dir / "demo-state.pth"
torch.save(trained.state_dict(), state_path)

from_torch = Multiclass()
from_torch.load_state_dict(torch.load(state_path, weights_only=True))
print(
    f"torch.save / torch.load: same tensors {same_state(trained.state_dict(), from_torch.state_dict())}, "
    f"same predictions {same_outputs(trained, from_torch, X_test)}"
)

with zipfile.ZipFile(state_path) as archive:
    records = [name.split("/", 1)[1] for name in archive.namelist()]  # without the archive's top folder
print(f"{state_path} is a zip archive of: {', '.join(records)}")

weight = trained.hidden.weight.detach()
buffer = io.BytesIO()
torch.save({"weight": weight, "first_row": weight[0]}, buffer)
with zipfile.ZipFile(buffer) as archive:
    shared_records = [name for name in archive.namelist() if "/data/" in name]
print(f"A weight and a view of its first row, saved together: {len(shared_records)} data record")

# %% [markdown]
# ## 3. The pitfall: saving the whole model
#
# `torch.save(model)` pickles the model object, and a pickle does not store a class, only
# the name to import it by. The article defines Multiclass in the script it runs, so the
# name recorded is `__main__.Multiclass`, and any other program that loads the file must
# have a `Multiclass` in *its own* `__main__`.
#
# This is reproduced for real, with two small programs, each run in a fresh Python process
# that cannot import this project: fresh_process/save_whole_model.py defines the class and
# saves the whole model, as the article does; fresh_process/load_whole_model.py, which does
# not define the class, tries the two loads a reader would. The cell prints the calls from
# the two files, then what each program printed.
#
# That unsafe `weights_only=False` load reads only a file written a moment before, in a
# private folder that nobody else can enter.
#
# To copy: `recipes/fix_whole_model_class_missing.py` turns such a file into a state_dict.

# %%
print("\n## 3. Saving the whole model")
with private_folder() as private:
    weights_file = private / MODEL_FILE
    torch.save(trained.state_dict(), weights_file)  # the weights checked above, in a folder only we can enter
    article_file = private / "demo-whole-model-main.pth"
    for program in ("save_whole_model.py", "load_whole_model.py"):
        code = (FRESH_PROCESS / program).read_text().splitlines()
        calls = [
            line.split("  #")[0].strip()
            for line in code
            if line.strip().startswith(("torch.save(", "torch.load("))
        ]
        print(f"fresh_process/{program} calls: {'; '.join(calls)}")
    saver = run_fresh_python(
        FRESH_PROCESS / "save_whole_model.py", weights_file, article_file, cwd=private, check=True
    )
    loader = run_fresh_python(FRESH_PROCESS / "load_whole_model.py", article_file, cwd=private, check=True)
    print(f"fresh_process/save_whole_model.py, which defines Multiclass: {saver.stdout.strip()}")
    refers_to = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(article_file))
    print(f"  the file refers to: {refers_to}")
    print("fresh_process/load_whole_model.py, which does not, tries to load it:")
    print("".join(f"  {line}\n" for line in loader.stdout.splitlines()), end="")
    article_copy = out_dir / "demo-whole-model-main.pth"
    shutil.copyfile(article_file, article_copy)  # for you to try

# %% [markdown]
# ## The ways out
#
# Best: save the state_dict (section 2). The file then needs no class at all.
#
# For a whole-model file you trust, keep `weights_only=True` and allowlist the classes it
# names with `torch.serialization.safe_globals`: your model class and the layers it holds.
# `get_unsafe_globals_in_checkpoint` lists them without loading anything. Saved from code
# that *imports* the class from a module, the file records an importable name
# (`build_model.Multiclass`). The article's file can be rescued too: allowlist your class
# under the name the file was saved with, `(Multiclass, "__main__.Multiclass")`.

# %%
print("\n## The ways out")
whole_path = out_dir / "demo-whole-model.pth"
torch.save(trained, whole_path)  # trained is a build_model.Multiclass
print(
    f"{whole_path}, saved from code that imports the class, refers to: "
    f"{sorted(torch.serialization.get_unsafe_globals_in_checkpoint(whole_path))}"
)
with torch.serialization.safe_globals([Multiclass, nn.Linear, nn.ReLU, nn.LogSoftmax]):
    whole = torch.load(whole_path, weights_only=True)
print(
    f"  torch.load inside safe_globals([Multiclass, nn.Linear, nn.ReLU, nn.LogSoftmax]): "
    f"{type(whole).__name__}, same predictions {same_outputs(trained, whole, X_test)}"
)

allowed = [(Multiclass, "__main__.Multiclass"), nn.Linear, nn.ReLU, nn.LogSoftmax]
with torch.serialization.safe_globals(allowed):
    rescued = torch.load(article_copy, weights_only=True)
print(
    f'  the article\'s file, with (Multiclass, "__main__.Multiclass") allowlisted: '
    f"{type(rescued).__name__}, same predictions {same_outputs(trained, rescued, X_test)}"
)

# %% [markdown]
# ## 4. The complete load-and-predict program
#
# The article ends with a program that loads the model and predicts. Corrected: it uses
# `torch.load` with `weights_only=True` rather than pickle (as the article's own comments
# advise), scores the *same* 45 test flowers as training did instead of a new random split,
# and predicts in eval mode without autograd.
#
# To copy: `recipes/save_and_load_for_inference.py`, the same program standing alone.

# %%
print("\n## 4. Load and predict")
split = load_iris_split()  # the same split as in training
model = Multiclass()
model.load_state_dict(torch.load(model_path, weights_only=True))
model.eval()
with torch.no_grad():
    predicted = model(split.X_test).argmax(dim=1)  # (45,) class indices
print(f"Accuracy: {(predicted == split.y_test).float().mean().item():.2f}")
for flower, guess, actual in list(zip(split.X_test, predicted, split.y_test, strict=True))[:N_FLOWERS_SHOWN]:
    measurements = ", ".join(f"{value:.1f}" for value in flower.tolist())
    print(f"  [{measurements}] -> {SPECIES[guess]:<10} (actual: {SPECIES[actual]})")
