"""Chapter 3: what is inside a model -- parameters, buffers and the state_dict.

Before saving a model it pays to know what there is to save: the trainable parameters, the
buffers that are not trained but still matter (a BatchNorm layer's running statistics),
the `state_dict` that collects both under their names, and the optimizer's own state.

Run (after `python train_iris.py`):

    python inspect_state.py

Reads OUT_DIR/iris-model.pth (default artifacts/iris-model.pth). Writes nothing.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from build_model import (
    MODEL_FILE,
    SEED,
    IrisSplit,
    Multiclass,
    chapter_parser,
    heading,
    load_iris_split,
    load_model_or_exit,
    make_optimizer,
    predict,
    same_outputs,
    seed_everything,
    train_one_epoch,
)

BATCH_SIZE = 5  # as in chapter 2
BN_EPOCHS = 20  # enough training for the BatchNorm statistics to move away from 0 and 1


# %%
# # Parameters: the tensors that training changes
#
# `model.parameters()` is a generator: it yields each weight and bias tensor in turn, in the
# order the layers were assigned. Copying those tensors into a fresh, untrained model makes
# it the trained model. The copy runs under `torch.no_grad()` because writing into a
# parameter in place is not something autograd should record.


def copy_parameters(source: nn.Module, target: nn.Module) -> None:
    with torch.no_grad():
        for target_param, source_param in zip(target.parameters(), source.parameters(), strict=True):
            target_param.copy_(source_param)


def show_parameters(trained: Multiclass, X: Tensor) -> bool:
    params = trained.parameters()
    print(f"model.parameters() is a {type(params).__name__}:")
    for param in params:
        print(f"  {type(param).__name__:<9} shape {tuple(param.shape)}")
    fresh = Multiclass()
    print(f"Fresh untrained model predicts the same:     {same_outputs(trained, fresh, X)}")
    copy_parameters(trained, fresh)
    identical = same_outputs(trained, fresh, X)
    print(f"After copying the parameters, same outputs:  {identical}")
    return identical


# %%
# # Buffers: state that is not trained but still matters
#
# Add a BatchNorm1d layer and the model gains state that no optimizer touches: the running
# mean and variance of its inputs, updated during training-mode forward passes and used in
# eval mode, and a counter of batches seen. They are *buffers*: in `buffers()` and in
# `state_dict()`, but not in `parameters()`. Copy only the parameters and the eval-mode
# predictions change; `load_state_dict` copies buffers too.


class MulticlassWithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 8)
        self.norm = nn.BatchNorm1d(8)
        self.act = nn.ReLU()
        self.output = nn.Linear(8, 3)
        self.logsoftmax = nn.LogSoftmax(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.norm(self.hidden(x)))  # (batch, 8)
        return self.logsoftmax(self.output(x))  # (batch, 3)


def names(named: Iterable[tuple[str, Tensor]]) -> list[str]:
    return [name for name, _ in named]


def show_buffers(split: IrisSplit) -> tuple[bool, bool]:
    """Returns (parameters-only copy matches, load_state_dict copy matches)."""
    trained = MulticlassWithBatchNorm()
    optimizer = make_optimizer(trained)
    for _ in range(BN_EPOCHS):
        train_one_epoch(trained, optimizer, split.X_train, split.y_train, BATCH_SIZE)

    print(f"parameters():  {names(trained.named_parameters())}")
    print(f"buffers():     {names(trained.named_buffers())}")
    print(f"state_dict():  {list(trained.state_dict())}")
    print(f"norm.running_mean: {trained.norm.running_mean}")

    params_only = MulticlassWithBatchNorm()
    copy_parameters(trained, params_only)
    params_match = same_outputs(trained, params_only, split.X_test)
    print(f"Parameters copied, buffers not -> same eval outputs: {params_match}")
    changed = (predict(trained, split.X_test) != predict(params_only, split.X_test)).sum()
    print(f"  ...and {changed.item()} of {len(split.X_test)} predicted species differ")

    full_copy = MulticlassWithBatchNorm()
    full_copy.load_state_dict(trained.state_dict())
    full_match = same_outputs(trained, full_copy, split.X_test)
    print(f"load_state_dict(state_dict())  -> same eval outputs: {full_match}")
    return params_match, full_match


# %%
# # The state_dict: an ordered mapping from names to tensors
#
# This is what `torch.save(model.state_dict(), path)` writes, and what `load_state_dict`
# expects back: the same names, the same shapes.


def show_state_dict(model: Multiclass) -> None:
    state = model.state_dict()
    print(f"{type(state).__name__} with {len(state)} entries:")
    for name, tensor in state.items():
        print(f"{name}:\n{tensor}")


# %%
# # The optimizer has a state_dict too
#
# Adam keeps two running averages per parameter (`exp_avg`, `exp_avg_sq`) and a step count,
# under `state`; its settings are under `param_groups`. Parameters are referred to by
# position (0, 1, 2, ...), not by name: load an optimizer state only into an optimizer
# built over the same parameters in the same order. Chapter 5 saves it to resume training.


def show_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    state_dict = optimizer.state_dict()
    print(f"optimizer.state_dict() keys: {list(state_dict)}")
    for index, per_param in state_dict["state"].items():
        moments = ", ".join(f"{name} {tuple(per_param[name].shape)}" for name in ("exp_avg", "exp_avg_sq"))
        print(f"  state[{index}]: step {per_param['step'].item():.0f}, {moments}")
    group = dict(state_dict["param_groups"][0])
    print(f"  param_groups[0]: lr={group['lr']}, betas={group['betas']}, params={group['params']}")


# %%
# # The trap: state_dict() returns references, not copies
#
# The tensors in a state_dict are the model's own tensors. Keep one in a variable, train
# on, and the "saved" weights change with the model. Take a real snapshot with
# `copy.deepcopy` (or by writing it to disk) before training further.


def show_reference_trap(
    model: Multiclass, optimizer: torch.optim.Optimizer, split: IrisSplit
) -> tuple[bool, bool]:
    """Returns (reference still equals the model, deep copy still equals the model)."""
    reference = model.state_dict()
    snapshot = copy.deepcopy(model.state_dict())
    train_one_epoch(model, optimizer, split.X_train, split.y_train, BATCH_SIZE)
    now = model.hidden.weight
    reference_follows = torch.equal(reference["hidden.weight"], now)
    snapshot_follows = torch.equal(snapshot["hidden.weight"], now)
    shared = reference["hidden.weight"].data_ptr() == now.data_ptr()
    print("After one more epoch of training:")
    print(f"  state_dict() kept in a variable still equals the model: {reference_follows}")
    print(f"    (it shares the model's memory: {shared})")
    print(f"  copy.deepcopy(state_dict()) still equals the model:     {snapshot_follows}")
    return reference_follows, snapshot_follows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = chapter_parser(__doc__)
    parser.add_argument("--seed", type=int, default=SEED, help=f"(default: {SEED})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    trained = load_model_or_exit(args.out_dir / MODEL_FILE)
    seed_everything(args.seed)
    torch.set_printoptions(precision=4, sci_mode=False)
    split = load_iris_split()

    heading("Parameters")
    show_parameters(trained, split.X_test)
    heading("Buffers")
    show_buffers(split)
    heading("The state_dict")
    show_state_dict(trained)
    heading("The optimizer's state_dict")
    optimizer = make_optimizer(trained)
    train_one_epoch(trained, optimizer, split.X_train, split.y_train, BATCH_SIZE)
    show_optimizer_state(optimizer)
    heading("state_dict() returns references")
    show_reference_trap(trained, optimizer, split)
    return 0


if __name__ == "__main__":
    sys.exit(main())
