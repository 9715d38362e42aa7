"""Chapter 3: each fact printed about parameters, buffers and state_dicts holds."""

from __future__ import annotations

import torch

import inspect_state
from build_model import Multiclass, load_iris_split, load_model, make_optimizer, seed_everything


def test_walkthrough_prints_each_fact(walkthrough):
    stdout = walkthrough.stdout("inspect_state.py")
    for line in [
        "model.parameters() is a generator:",
        "After copying the parameters, same outputs:  True",
        "buffers():     ['norm.running_mean', 'norm.running_var', 'norm.num_batches_tracked']",
        "Parameters copied, buffers not -> same eval outputs: False",
        "load_state_dict(state_dict())  -> same eval outputs: True",
        "OrderedDict with 4 entries:",
        "optimizer.state_dict() keys: ['state', 'param_groups']",
        "  state[0]: step 21, exp_avg (8, 4), exp_avg_sq (8, 4)",
        "  state_dict() kept in a variable still equals the model: True",
        "  copy.deepcopy(state_dict()) still equals the model:     False",
    ]:
        assert line in stdout


def test_copying_parameters_reproduces_the_trained_model(trained_model_path, capsys):
    trained = load_model(trained_model_path)
    assert inspect_state.show_parameters(trained, load_iris_split().X_test) is True


def test_buffers_are_state_but_not_parameters(capsys):
    seed_everything(0)
    params_only_matches, state_dict_matches = inspect_state.show_buffers(load_iris_split())
    assert params_only_matches is False
    assert state_dict_matches is True
    model = inspect_state.MulticlassWithBatchNorm()
    buffer_names = {name for name, _ in model.named_buffers()}
    assert buffer_names == {"norm.running_mean", "norm.running_var", "norm.num_batches_tracked"}
    assert buffer_names.isdisjoint(name for name, _ in model.named_parameters())
    assert buffer_names <= set(model.state_dict())


def test_state_dict_holds_references_until_deep_copied(capsys):
    seed_everything(0)
    model = Multiclass()
    before = model.hidden.weight.detach().clone()
    follows, snapshot_follows = inspect_state.show_reference_trap(
        model, make_optimizer(model), load_iris_split()
    )
    assert not torch.equal(before, model.hidden.weight)  # training did change the weights
    assert follows is True
    assert snapshot_follows is False
