# %% [markdown]
# # Chapter 3: what is inside a model -- parameters, buffers and the state_dict
#
# Before saving a model it pays to know what there is to save: the trainable parameters,
# the buffers that are not trained but still matter (a BatchNorm layer's running
# statistics), the `state_dict` that collects both under their names, and the optimizer's
# own state. And one trap: `state_dict()` hands out the model's live tensors, not copies.
#
#     python inspect_state.py [--seed 42] [--out-dir artifacts]
#
# Run it after `python train_iris.py`, or cell by cell in VS Code or Jupyter.
#
# **Reads** `OUT_DIR/iris-model.pth` (default `artifacts/iris-model.pth`), the model
# chapter 2 trained. **Writes** nothing.
#
# Next: chapter 4, `python save_load_demo.py`, saving and loading it four ways.

# %%
from __future__ import annotations

import copy

# The command line first, before torch is imported: --help, a bad flag, a missing file and
# Ctrl-C are answered at once, in one line.
from support.cli import chapter_parser, parse_chapter_args, require_inputs, seed
from support.settings import MODEL_FILE, SEED, train_command

BN_EPOCHS = 20  # enough training for the BatchNorm statistics to move away from 0 and 1

parser = chapter_parser()
parser.add_argument(
    "--seed",
    type=seed,
    default=SEED,
    help=f"seeds the fresh models and the extra training, not the train/test split (default: {SEED})",
)
args = parse_chapter_args(parser)
require_inputs(args.out_dir / MODEL_FILE, made_by=train_command(args.out_dir))

import torch
from torch import Tensor, nn

from build_model import Multiclass, load_iris_split, seed_everything, train_one_epoch
from support.untrusted_files import load_model_or_exit

# The one file this chapter reads, checked before any lesson uses it: a missing or bad one
# ends the chapter here in one line.
trained = load_model_or_exit(args.out_dir / MODEL_FILE, Multiclass, made_by=train_command(args.out_dir))
seed_everything(args.seed)
torch.set_printoptions(precision=4, sci_mode=False)
split = load_iris_split()
X_train, y_train, X_test, y_test = split.X_train, split.y_train, split.X_test, split.y_test


# %% [markdown]
# ## Parameters: the tensors that training changes
#
# `model.parameters()` is a generator: it yields each weight and bias tensor in turn, in the
# order the layers were assigned. A fresh, untrained model predicts differently; copy the
# trained tensors into it and it becomes the trained model. The copy runs under
# `torch.no_grad()`: writing into a parameter in place is not something autograd should
# record.

# %%
print("\n## Parameters")
params = trained.parameters()
print(f"model.parameters() is a {type(params).__name__}:")
for param in params:
    print(f"  {type(param).__name__:<9} shape {tuple(param.shape)}")

fresh = Multiclass()
trained.eval()
fresh.eval()
with torch.no_grad():
    print(f"Fresh untrained model predicts the same:     {torch.equal(trained(X_test), fresh(X_test))}")
    for fresh_param, trained_param in zip(fresh.parameters(), trained.parameters(), strict=True):
        fresh_param.copy_(trained_param)
    print(f"After copying the parameters, same outputs:  {torch.equal(trained(X_test), fresh(X_test))}")

# %% [markdown]
# ## Buffers: state that is not trained but still matters
#
# Add a BatchNorm1d layer and the model gains state that no optimizer touches: the running
# mean and variance of its inputs, updated by every training-mode forward pass and used in
# eval mode, and a count of the batches seen. They are *buffers*: in `buffers()` and in
# `state_dict()`, but not in `parameters()`. Copy only the parameters and the eval-mode
# predictions change; `load_state_dict` copies the buffers too. (The Linear layer before
# the BatchNorm has no bias, as is usual there: the BatchNorm's own `norm.bias` does its
# job.)

# %%
print("\n## Buffers")


class MulticlassWithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # No bias before a BatchNorm: it subtracts the batch mean, bias and all, so the bias
        # would get a gradient of pure rounding noise, which Adam scales up to full-size
        # steps, and the result would hang on the machine's thread count.
        self.hidden = nn.Linear(4, 8, bias=False)
        self.norm = nn.BatchNorm1d(8)
        self.act = nn.ReLU()
        self.output = nn.Linear(8, 3)
        self.logsoftmax = nn.LogSoftmax(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.norm(self.hidden(x)))  # (batch, 8)
        return self.logsoftmax(self.output(x))  # (batch, 3)


bn_model = MulticlassWithBatchNorm()
bn_optimizer = torch.optim.Adam(bn_model.parameters(), lr=0.001)
for _ in range(BN_EPOCHS):
    train_one_epoch(bn_model, bn_optimizer, X_train, y_train)  # chapter 2's loop

print(f"parameters():  {[name for name, _ in bn_model.named_parameters()]}")
print(f"buffers():     {[name for name, _ in bn_model.named_buffers()]}")
print(f"state_dict():  {list(bn_model.state_dict())}")
print(f"norm.running_mean: {bn_model.norm.running_mean}")

params_only = MulticlassWithBatchNorm()
with torch.no_grad():
    for copy_param, bn_param in zip(params_only.parameters(), bn_model.parameters(), strict=True):
        copy_param.copy_(bn_param)
full_copy = MulticlassWithBatchNorm()
full_copy.load_state_dict(bn_model.state_dict())

bn_model.eval()
params_only.eval()
full_copy.eval()
with torch.no_grad():
    bn_out, params_only_out, full_copy_out = bn_model(X_test), params_only(X_test), full_copy(X_test)
changed = (bn_out.argmax(dim=1) != params_only_out.argmax(dim=1)).sum().item()
print(f"Parameters copied, buffers not -> same eval outputs: {torch.equal(bn_out, params_only_out)}")
print(f"  ...and {changed} of {len(X_test)} predicted species differ")
print(f"load_state_dict(state_dict())  -> same eval outputs: {torch.equal(bn_out, full_copy_out)}")

# %% [markdown]
# ## The state_dict: an ordered mapping from names to tensors
#
# This is what `torch.save(model.state_dict(), path)` writes, and what `load_state_dict`
# expects back: the same names, the same shapes. The names come from the attributes the
# layers were assigned to (`hidden`, `output`); layers without weights have no entries.

# %%
print("\n## The state_dict")
state = trained.state_dict()
print(f"{type(state).__name__} with {len(state)} entries:")
for name, tensor in state.items():
    print(f"{name}:\n{tensor}")

# %% [markdown]
# ## The optimizer has a state_dict too
#
# Adam keeps two running averages per parameter (`exp_avg`, `exp_avg_sq`) and a step count,
# under `state`; its settings are under `param_groups`. Parameters are referred to by
# position (0, 1, 2, ...), not by name: load an optimizer state only into an optimizer
# built over the same parameters in the same order. One epoch of training (21 steps of 5
# flowers) fills it. Chapter 5 saves it to resume training.

# %%
print("\n## The optimizer's state_dict")
optimizer = torch.optim.Adam(trained.parameters(), lr=0.001)
train_one_epoch(trained, optimizer, X_train, y_train)
optimizer_state = optimizer.state_dict()
print(f"optimizer.state_dict() keys: {list(optimizer_state)}")
for index, per_param in optimizer_state["state"].items():
    moments = ", ".join(f"{name} {tuple(per_param[name].shape)}" for name in ("exp_avg", "exp_avg_sq"))
    print(f"  state[{index}]: step {per_param['step'].item():.0f}, {moments}")
group = optimizer_state["param_groups"][0]
print(f"  param_groups[0]: lr={group['lr']}, betas={group['betas']}, params={group['params']}")

# %% [markdown]
# ## The trap: state_dict() returns references, not copies
#
# The tensors in a state_dict are the model's own tensors. Keep one in a variable, train
# on, and the "saved" weights change with the model. Take a real snapshot with
# `copy.deepcopy` (or by writing it to disk) before training further.
#
# To copy: `recipes/keep_best_checkpoint.py`, where the trap saves the last model as the
# best.

# %%
print("\n## state_dict() returns references")
reference = trained.state_dict()
snapshot = copy.deepcopy(trained.state_dict())
train_one_epoch(trained, optimizer, X_train, y_train)
now = trained.hidden.weight
reference_follows = torch.equal(reference["hidden.weight"], now)
snapshot_follows = torch.equal(snapshot["hidden.weight"], now)
print("After one more epoch of training:")
print(f"  state_dict() kept in a variable still equals the model: {reference_follows}")
print(f"    (it shares the model's memory: {reference['hidden.weight'].data_ptr() == now.data_ptr()})")
print(f"  copy.deepcopy(state_dict()) still equals the model:     {snapshot_follows}")
