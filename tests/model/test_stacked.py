"""The stacked training route (model/stacked.py) computes what the ensemble's modules and torch.optim.AdamW
compute, keeps the network's state_dict and the optimiser's checkpoint format, and keeps training's
start-up free of torch.compile's machinery."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from model.network import Ensemble, build_network
from model.stacked import FlatAdamW, StackedEnsemble
from tests.conftest import ROOT


def _network(dropout: float = 0.0, seed: int = 0) -> Ensemble:
    torch.manual_seed(seed)
    return build_network(7, (16, 8), dropout, members=3)


def _module_loss(network: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    outputs = network(x)
    return nn.functional.mse_loss(outputs, y[:, None].expand_as(outputs), reduction="sum")


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_the_stacked_forward_and_gradients_are_the_members(dropout: float) -> None:
    modules, stacked_network = _network(dropout), _network(dropout)
    stacked = StackedEnsemble.of(stacked_network)
    x, y = torch.randn(10, 7), torch.randn(10)

    torch.manual_seed(5)   # the same dropout draws for both: each member its own masks, in the same order
    expected = modules.train()(x)
    torch.manual_seed(5)
    ours = stacked(x, training=True)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)
    if dropout:   # dropout was applied in training, not in eval
        assert not torch.equal(ours[:, 0], _network(dropout).eval()(x)[:, 0])

    torch.manual_seed(5)
    _module_loss(modules, x, y).backward()
    stacked.zero_grad()
    torch.manual_seed(5)
    loss = nn.functional.mse_loss(stacked(x, training=True), y[:, None].expand(10, 3), reduction="sum")
    loss.backward()
    for (name, parameter), (_, _, grad) in zip(modules.named_parameters(), stacked.parameter_slices, strict=True):
        assert parameter.grad is not None
        torch.testing.assert_close(grad, parameter.grad, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(stacked(x, training=False), modules.eval()(x), rtol=1e-6, atol=1e-6)


def test_flat_adamw_takes_torch_adamw_steps_and_keeps_its_state_dict_format() -> None:
    modules, stacked_network = _network(), _network()
    stacked = StackedEnsemble.of(stacked_network)
    theirs = torch.optim.AdamW(modules.parameters(), lr=0.01, weight_decay=0.1)
    ours = FlatAdamW(stacked, lr=0.01, weight_decay=0.1)
    assert ours.state_dict() == theirs.state_dict()   # before the first step: no state, the same group
    for _ in range(5):
        x, y = torch.randn(10, 7), torch.randn(10)
        theirs.zero_grad()
        _module_loss(modules, x, y).backward()
        theirs.step()
        stacked.zero_grad()
        nn.functional.mse_loss(stacked(x, training=True), y[:, None].expand(10, 3), reduction="sum").backward()
        ours.step()
    for key, value in modules.state_dict().items():
        torch.testing.assert_close(stacked_network.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)

    saved, expected = ours.state_dict(), theirs.state_dict()
    assert saved["param_groups"] == expected["param_groups"]
    assert saved["state"].keys() == expected["state"].keys()
    for index, entry in expected["state"].items():
        assert entry.keys() == saved["state"][index].keys()
        assert float(saved["state"][index]["step"]) == float(entry["step"]) == 5
        torch.testing.assert_close(saved["state"][index]["exp_avg"], entry["exp_avg"], rtol=1e-5, atol=1e-7)
    # each loads the other's: a checkpoint written before the stacked route resumes after it, and back
    theirs.load_state_dict(saved)
    assert torch.equal(theirs.state_dict()["state"][2]["exp_avg"], saved["state"][2]["exp_avg"])
    again = FlatAdamW(stacked, lr=1.0, weight_decay=0.0)
    again.load_state_dict(expected)
    assert (again.steps, again.lr, again.weight_decay) == (5, 0.01, 0.1)
    torch.testing.assert_close(again.state_dict()["state"][3]["exp_avg_sq"], expected["state"][3]["exp_avg_sq"])


def test_the_network_is_the_stacked_state_until_released() -> None:
    network = _network()
    stacked = StackedEnsemble.of(network)
    first_weight = network.members[0][0].weight
    with torch.no_grad():
        stacked.flat.add_(1.0)
    assert torch.equal(network.state_dict()["members.0.0.weight"], first_weight)
    before = first_weight.detach().clone()
    stacked.release()
    with torch.no_grad():
        stacked.flat.add_(1.0)
    assert torch.equal(network.members[0][0].weight, before)   # its own tensor again
    assert network.members[0][0].weight.untyped_storage().nbytes() == before.numel() * 4


def test_only_an_ensemble_of_plain_mlps_is_stacked() -> None:
    with pytest.raises(ValueError, match="only an Ensemble"):
        StackedEnsemble.of(nn.Linear(3, 1))
    with pytest.raises(ValueError, match="another activation"):
        StackedEnsemble.of(Ensemble([nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))]))
    with pytest.raises(ValueError, match="differ in shape"):
        StackedEnsemble.of(Ensemble([nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)),
                                     nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 1))]))


def test_training_starts_without_importing_torch_compile_and_stays_deterministic() -> None:
    # torch.use_deterministic_algorithms and any torch.optim optimiser import torch._dynamo and
    # torch._inductor (~1.2 s of start-up); fit() must not need them, and must still switch determinism on.
    script = """
import sys, torch
from tests.conftest import read_cars
from model.config import TrainingConfig
from model.training import fit
fit(read_cars(200), TrainingConfig(hidden_layers=(8,), ensemble_size=2, epochs=2))
assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
print(sorted(name for name in sys.modules if name.startswith(("torch._dynamo", "torch._inductor"))))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize(("n_inputs", "hidden", "members", "rows"),
                         [(7, (16, 8), 3, 10), (36, (128, 64), 5, 64), (4, (5,), 1, 1), (3, (8, 8, 8), 2, 33),
                          (5, (6, 4), 2, 0)])
def test_the_hand_written_gradient_is_autograds(dropout: float, n_inputs: int, hidden: tuple[int, ...],
                                                members: int, rows: int) -> None:
    torch.manual_seed(1)
    stacked = StackedEnsemble.of(build_network(n_inputs, hidden, dropout, members=members))
    x, y = torch.randn(rows, n_inputs), torch.randn(rows)
    divisor = 3 * max(rows, 1) * members   # a batch's rows over all ranks: more than this rank's
    stacked.zero_grad()
    torch.manual_seed(5)
    outputs = stacked(x, training=True)
    expected_loss = nn.functional.mse_loss(outputs, y[:, None].expand_as(outputs), reduction="sum") / divisor
    expected_loss.backward()
    expected, expected_rng = stacked.grad.clone(), torch.get_rng_state()

    stacked.grad.fill_(7.0)   # replaced, not added to
    torch.manual_seed(5)
    loss = stacked.squared_error_gradient(x, y, divisor)
    assert torch.equal(torch.get_rng_state(), expected_rng)   # the same dropout draws, no more
    torch.testing.assert_close(loss, expected_loss.detach(), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(stacked.grad, expected, rtol=1e-5, atol=1e-8)
    with torch.inference_mode():   # eval mode's mean is __call__'s
        torch.testing.assert_close(stacked.predict_mean(x), stacked(x, training=False).mean(dim=1))
    if not dropout:   # again, in the reused workspace: the same numbers, bit for bit
        first = stacked.grad.clone()
        assert torch.equal(stacked.squared_error_gradient(x, y, divisor), loss)
        assert torch.equal(stacked.grad, first)

def test_predict_mean_in_blocks_is_the_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    stacked = StackedEnsemble.of(_network())
    x = torch.randn(50, 7)
    monkeypatch.setattr(StackedEnsemble, "PREDICT_BLOCK_ROWS", 16)
    with torch.inference_mode():
        means = stacked.predict_mean(x)
    torch.testing.assert_close(means, stacked(x, training=False).mean(dim=1), rtol=1e-6, atol=1e-6)
    # grown in inference mode, the workspace still serves a training step outside it
    stacked.squared_error_gradient(x[:40], torch.randn(40), 40.0)
