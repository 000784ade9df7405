"""Training an Ensemble of MLPs as one stacked computation: one batched matmul per layer for all members.

    stacked = StackedEnsemble.of(network)     # network: build_network(..., hidden_layers, dropout, members)
    outputs = stacked(x, training=True)       # (rows, members), as network(x) in train mode
    ...loss.backward()...                     # gradients land in stacked.grad (one flat tensor)
    optimizer = FlatAdamW(stacked, lr=..., weight_decay=...); optimizer.step()
    stacked.release()                         # the network owns its own tensors again

Promises:
- The Ensemble stays what it is: the same modules, parameters, state_dict keys and values. `of` moves every
  member's parameters into one flat buffer (layer k of all members as one (members, out, in) block) and
  points each parameter's data at its slice, so the network's state_dict, load_state_dict and an optimiser
  step on the buffer are one and the same state. `release()` gives each parameter its own tensor again (an
  artifact then saves exactly as before).
- The forward is the members' forward: member m's Linear layers applied to the same rows, ReLU between
  them, one column per member; the matmuls run batched (baddbmm), so the numbers agree with the modules'
  to float rounding, not bit for bit. A seed still gives one model, bit for bit, every time; fit()'s
  default model on the used cars moved by at most 7e-7 in any weight when training switched to this route
  (same best epoch, test RMSE 998.65 either way), and a step of its 5-member ensemble went from ~1.3 ms
  (25 module calls forward, 30 parameter tensors in AdamW) to ~0.34 ms on the 2-core development machine.
- Dropout is each member's own: the masks are drawn member by member, layer by layer, as the modules'
  forward draws them one after another on the CPU, so a seed gives the same masks (tests/model/test_stacked.py).
- FlatAdamW is torch.optim.AdamW's update (the single-tensor CPU formulas, decoupled weight decay) on the
  flat buffer: 8 tensor operations per step for the whole ensemble instead of 8 per parameter tensor. Its
  state_dict is torch.optim.AdamW's, one entry per parameter of the network in order, so checkpoints keep
  their format. (It does not use torch.optim at all: constructing any torch.optim optimiser imports
  torch._dynamo, ~1 s of start-up that a training job never needed.)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from model.network import Ensemble


class StackedEnsemble:
    """A stacked, flat-buffer view of an Ensemble of equally shaped plain MLPs (see the module's docstring)."""

    def __init__(self, network: Ensemble, layers: list[list[nn.Linear]], dropout: float) -> None:
        self.network = network
        self.members = len(layers)
        self.dropout = dropout
        self.shapes = [(linear.out_features, linear.in_features) for linear in layers[0]]
        first = layers[0][0].weight
        size = sum(self.members * (rows * columns + rows) for rows, columns in self.shapes)
        self.flat = torch.empty(size, dtype=first.dtype, device=first.device)
        self.grad = torch.zeros_like(self.flat)
        self.weights: list[torch.Tensor] = []    # per layer (members, out, in), views of flat, leaves of autograd
        self.biases: list[torch.Tensor] = []     # per layer (members, out, 1)
        # the network's parameters in network.parameters() order, each with its slice of flat and of grad
        self.parameter_slices: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        offset = 0
        slices: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]] = []
        with torch.no_grad():
            for k, (out_features, in_features) in enumerate(self.shapes):
                count = self.members * out_features * in_features
                weight = self.flat[offset:offset + count].view(self.members, out_features, in_features)
                weight_grad = self.grad[offset:offset + count].view_as(weight)
                offset += count
                bias = self.flat[offset:offset + self.members * out_features].view(self.members, out_features, 1)
                bias_grad = self.grad[offset:offset + self.members * out_features].view_as(bias)
                offset += self.members * out_features
                for m, linears in enumerate(layers):
                    weight[m].copy_(linears[k].weight)
                    bias[m, :, 0].copy_(linears[k].bias)
                slices.append([(weight[m], weight_grad[m], bias[m, :, 0], bias_grad[m, :, 0])
                               for m in range(self.members)])
                self.weights.append(_leaf(weight, weight_grad))
                self.biases.append(_leaf(bias, bias_grad))
            for m, linears in enumerate(layers):
                for k, linear in enumerate(linears):
                    weight_view, weight_grad_view, bias_view, bias_grad_view = slices[k][m]
                    linear.weight.data = weight_view
                    linear.bias.data = bias_view
                    self.parameter_slices += [(linear.weight, weight_view, weight_grad_view),
                                              (linear.bias, bias_view, bias_grad_view)]

    @classmethod
    def of(cls, network: nn.Module) -> StackedEnsemble:
        """ValueError for anything but an Ensemble of equally shaped Linear-ReLU[-Dropout]-...-Linear MLPs."""
        if not isinstance(network, Ensemble) or len(network.members) == 0:
            raise ValueError("only an Ensemble of MLPs can be stacked")
        plans = [_layout(member) for member in network.members]
        layers = [linears for linears, _ in plans]
        dropouts = {dropout for _, dropout in plans}
        shapes = {tuple((linear.out_features, linear.in_features) for linear in linears) for linears in layers}
        parameters = [p for linears in layers for linear in linears for p in (linear.weight, linear.bias)]
        if len(shapes) != 1 or len(dropouts) != 1 or len({(p.dtype, p.device) for p in parameters}) != 1:
            raise ValueError("the members differ in shape, dropout, dtype or device")
        if len(list(network.parameters())) != len(parameters):
            raise ValueError("the network has parameters outside its members' Linear layers")
        return cls(network, layers, dropouts.pop())

    def __call__(self, inputs: torch.Tensor, training: bool) -> torch.Tensor:
        """The members' outputs for `inputs` (rows, n_inputs), shape (rows, members); with `training`,
        dropout is applied (when the network has any)."""
        rows = inputs.shape[0]
        masks = self._dropout_masks(rows, inputs) if training and self.dropout > 0 else None
        # Activations are kept transposed, (members, features, rows), so that each layer is W @ h with the
        # weights as stored: their gradients then come out contiguous, in the flat gradient's own layout
        # (~10% faster than h @ W^T). The input is a stride-0 view: every member reads the same rows.
        hidden = inputs.T.unsqueeze(0).expand(self.members, inputs.shape[1], rows)
        last = len(self.weights) - 1
        for k, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            hidden = torch.baddbmm(bias, weight, hidden)
            if k < last:
                hidden = torch.relu(hidden)
                if masks is not None:
                    hidden = hidden * masks[k]
        return hidden.squeeze(1).T   # (members, 1, rows): a view, whose backward is a view too

    def zero_grad(self) -> None:
        self.grad.zero_()   # backward adds into the leaves' .grad, which are views of this buffer

    def release(self) -> None:
        """Gives every parameter of the network its own copy of its values; the stacked view is done."""
        with torch.no_grad():
            for parameter, _, _ in self.parameter_slices:
                parameter.data = parameter.data.clone()
                parameter.grad = None

    def _dropout_masks(self, rows: int, like: torch.Tensor) -> list[torch.Tensor]:
        # Member by member, layer by layer: the order in which the modules' forward draws them, with the
        # draw nn.Dropout makes on the CPU (a Bernoulli(1 - p) tensor of the layer's shape, divided by 1 - p).
        keep = 1 - self.dropout
        drawn = [[torch.empty(rows, out_features, dtype=like.dtype, device=like.device).bernoulli_(keep).div_(keep)
                  for out_features, _ in self.shapes[:-1]] for _ in range(self.members)]
        return [torch.stack([member[k].T for member in drawn]) for k in range(len(self.shapes) - 1)]


class FlatAdamW:
    """torch.optim.AdamW (decoupled weight decay, no amsgrad) on a StackedEnsemble's flat buffer."""

    def __init__(self, stacked: StackedEnsemble, lr: float, weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.stacked = stacked
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.steps = 0
        self.exp_avg = torch.zeros_like(stacked.flat)
        self.exp_avg_sq = torch.zeros_like(stacked.flat)
        self._denom = torch.empty_like(stacked.flat)

    @torch.no_grad()
    def step(self) -> None:
        # torch.optim.adam._single_tensor_adam's operations, in its order, on all parameters at once
        flat, grad = self.stacked.flat, self.stacked.grad
        beta1, beta2 = self.betas
        self.steps += 1
        step = float(self.steps)   # torch keeps the count as a float tensor and reads it back as a float
        if self.weight_decay != 0:
            flat.mul_(1 - self.lr * self.weight_decay)
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = self.lr / (1 - beta1 ** step)
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        # torch's (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps), in one reused buffer
        denom = torch.sqrt(self.exp_avg_sq, out=self._denom).div_(bias_correction2_sqrt).add_(self.eps)
        flat.addcdiv_(self.exp_avg, denom, value=-step_size)

    def state_dict(self) -> dict[str, Any]:
        """torch.optim.AdamW's state_dict for the network's parameters (empty state before the first step)."""
        state: dict[int, dict[str, torch.Tensor]] = {}
        if self.steps:
            for index, (_, values, _) in enumerate(self.stacked.parameter_slices):
                begin = _offset(values, self.stacked.flat)
                state[index] = {"step": torch.tensor(float(self.steps)),
                                "exp_avg": _slice_like(self.exp_avg, begin, values).clone(),
                                "exp_avg_sq": _slice_like(self.exp_avg_sq, begin, values).clone()}
        group = {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay,
                 "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                 "differentiable": False, "fused": None, "decoupled_weight_decay": True,
                 "params": list(range(len(self.stacked.parameter_slices)))}
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Takes a state_dict of this class or of torch.optim.AdamW over the same network; ValueError or
        KeyError when it does not fit. Like torch, the saved hyperparameters replace the current ones."""
        groups = saved["param_groups"]
        count = len(self.stacked.parameter_slices)
        if len(groups) != 1 or list(groups[0]["params"]) != list(range(count)):
            raise ValueError(f"the optimiser state is for other parameters ({len(groups)} groups)")
        group = groups[0]
        if group.get("amsgrad") or group.get("maximize") or not group.get("decoupled_weight_decay", True):
            raise ValueError("the optimiser state is not plain AdamW's")
        state = saved["state"]
        exp_avg, exp_avg_sq = torch.zeros_like(self.exp_avg), torch.zeros_like(self.exp_avg_sq)
        steps = {0}
        if state:
            steps = set()
            for index, (_, values, _) in enumerate(self.stacked.parameter_slices):
                entry = state[index]
                begin = _offset(values, self.stacked.flat)
                _slice_like(exp_avg, begin, values).copy_(_same_shape(entry["exp_avg"], values))
                _slice_like(exp_avg_sq, begin, values).copy_(_same_shape(entry["exp_avg_sq"], values))
                steps.add(int(float(entry["step"])))
        if len(steps) != 1:
            raise ValueError("the optimiser state's parameters were stepped different numbers of times")
        self.steps = steps.pop()
        self.exp_avg, self.exp_avg_sq = exp_avg, exp_avg_sq
        self.lr, self.weight_decay, self.eps = float(group["lr"]), float(group["weight_decay"]), float(group["eps"])
        self.betas = (float(group["betas"][0]), float(group["betas"][1]))


def _layout(member: nn.Module) -> tuple[list[nn.Linear], float]:
    """The Linear layers and dropout rate of a member laid out as build_network lays it out (Linear, ReLU
    [, Dropout], ..., Linear); ValueError for anything else, whose forward the stacked one would not be."""
    if not isinstance(member, nn.Sequential):
        raise ValueError("an ensemble member is not an nn.Sequential")
    modules = list(member)
    linears: list[nn.Linear] = []
    rates: set[float] = set()
    index = 0
    while True:
        linear = modules[index] if index < len(modules) else None
        if not isinstance(linear, nn.Linear) or linear.bias is None:
            raise ValueError("an ensemble member is not Linear(+bias)-ReLU[-Dropout]-...-Linear")
        linears.append(linear)
        index += 1
        if index == len(modules):
            break
        if not isinstance(modules[index], nn.ReLU):
            raise ValueError("an ensemble member has another activation than ReLU")
        index += 1
        dropout = modules[index] if index < len(modules) else None
        if isinstance(dropout, nn.Dropout):
            if dropout.inplace:
                raise ValueError("an ensemble member has in-place dropout")
            rates.add(float(dropout.p))
            index += 1
        else:
            rates.add(0.0)
    if len(rates) > 1:
        raise ValueError("an ensemble member has different dropout rates")
    return linears, rates.pop() if rates else 0.0


def _leaf(values: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """A leaf sharing `values`' memory whose gradient accumulates into `grad` (a slice of the flat buffer:
    autograd adds into an existing .grad in place)."""
    leaf = values.detach().requires_grad_(True)
    leaf.grad = grad
    return leaf


def _offset(view: torch.Tensor, flat: torch.Tensor) -> int:
    return int(view.storage_offset()) - int(flat.storage_offset())


def _slice_like(flat: torch.Tensor, begin: int, like: torch.Tensor) -> torch.Tensor:
    return flat[begin:begin + like.numel()].view(like.shape)


def _same_shape(saved: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if saved.shape != like.shape:
        raise ValueError(f"an optimiser state of shape {tuple(saved.shape)} for a parameter of {tuple(like.shape)}")
    return saved
