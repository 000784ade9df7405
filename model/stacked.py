"""Training an Ensemble of MLPs as one stacked computation: one batched matmul per layer for all members.

    stacked = StackedEnsemble.of(network)     # network: build_network(..., hidden_layers, dropout, members)
    loss = stacked.squared_error_gradient(x, y, divisor)   # the MSE training loss; its gradient in stacked.grad
    outputs = stacked(x, training=True)       # or, for any other loss: (rows, members), as network(x) in
    ...loss.backward()...                     # train mode, and autograd's gradients land in stacked.grad
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
- squared_error_gradient(x, y, divisor) is the training step's forward and backward in one: the members'
  squared errors summed over rows and members and divided by `divisor`, and that loss's gradient written
  into `grad` (replacing it), by hand: per layer dW = g h_prev^T and db = g summed over rows (batched over
  members, straight into the flat gradient's slices), g_prev = W^T g where the ReLU (and dropout) let it
  through. That is autograd's backward of the same loss through `self(x, training=True)` to float rounding
  (tests/model/test_stacked.py), with the same dropout draws; autograd's bookkeeping is skipped and the
  activations live in a workspace reused from step to step (fresh ones cost page faults every step). A step
  of the default ensemble on the used cars went from ~0.44 ms to ~0.27 ms on the 2-core development
  machine; fit()'s model stayed within float rounding of the autograd route's (test RMSE 998.65 either
  way). predict_mean(x) is the eval-mode forward's member mean in the same workspace.
- Dropout is each member's own: the masks are drawn member by member, layer by layer, as the modules'
  forward draws them one after another on the CPU, so a seed gives the same masks (tests/model/test_stacked.py).
- FlatAdamW is torch.optim.AdamW's update (decoupled weight decay), run by the kernel behind
  torch.optim.AdamW(fused=True) on the flat buffer: one pass for the whole ensemble instead of 8 operations
  per parameter tensor (equal to the default AdamW's update to float rounding). Its state_dict is
  torch.optim.AdamW's, one entry per parameter of the network in order, so checkpoints keep their format.
  (It does not construct a torch.optim optimiser: that imports torch._dynamo, ~1 s of start-up that a
  training job never needed.) With it and the first layer as one GEMM for all members, a step of the
  default ensemble on the used cars takes ~0.24 ms, of which the matmuls, at about the 2 cores' peak
  FLOP rate, are ~0.17 ms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from model.network import Ensemble
from model.onehot_rows import OneHotRows, first_layer, first_layer_gradient


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
        # the same views without autograd, and the gradient's views, for the hand-written backward
        self._weight_values: list[torch.Tensor] = []
        self._weights_transposed: list[torch.Tensor] = []
        self._bias_values: list[torch.Tensor] = []
        self._weight_grads: list[torch.Tensor] = []
        self._bias_grads: list[torch.Tensor] = []
        self._workspace = torch.empty(0, dtype=first.dtype, device=first.device)   # see _workspace_views
        self._views: dict[tuple[int, bool], _Workspace] = {}
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
                self._weight_values.append(weight)
                self._weights_transposed.append(weight.transpose(1, 2))
                self._bias_values.append(bias)
                self._weight_grads.append(weight_grad)
                self._bias_grads.append(bias_grad)
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

    def squared_error_gradient(self, inputs: torch.Tensor | OneHotRows, targets: torch.Tensor,
                               divisor: float) -> torch.Tensor:
        """The training loss sum((outputs - targets)^2) / divisor over `inputs`' rows and all members, as a
        0-dim tensor, with `outputs` = self(inputs, training=True) (dropout masks drawn as it draws them);
        its gradient is written into `grad`, replacing what was there (no zero_grad needed). `targets` has
        shape (rows,); rows may be 0 (a rank holding none of a batch: zero loss, zero gradient). Neither
        may require grad: nothing here is recorded by autograd (the flat buffer is no leaf of it). The
        inputs may be compact rows (model/onehot_rows.py): the first layer's products then skip the zeros."""
        rows = len(inputs)
        masks = self._dropout_masks(rows, self.flat) if self.dropout > 0 else None
        work = self._workspace_views(rows)
        layer_inputs = self._forward_into(inputs, work.outputs, masks)
        error = work.outputs[-1].sub_(targets)   # (members, 1, rows)
        loss = torch.dot(work.flat_output, work.flat_output) / divisor
        # d loss / d output = 2 (output - target) / divisor, as mse_loss's backward scales it
        upstream = error.mul_(2 / divisor)
        for k in range(len(self.shapes) - 1, 0, -1):
            torch.bmm(upstream, work.transposed[k - 1], out=self._weight_grads[k])
            torch.sum(upstream, dim=2, keepdim=True, out=self._bias_grads[k])
            upstream = torch.bmm(self._weights_transposed[k], upstream, out=work.upstreams[k - 1])
            if masks is not None:
                upstream = upstream.mul_(masks[k - 1])
            # ReLU's derivative: the gradient passes where the layer's output is positive (with dropout,
            # a dropped unit's gradient is 0 already; its output is 0 too). threshold_backward is the ATen
            # operator autograd's ReLU backward runs: one pass, ~4 us here, where a comparison and
            # masked_fill_ (or torch.where) take ~35 us on these shapes.
            upstream = _THRESHOLD_BACKWARD(upstream, layer_inputs[k], 0, grad_input=upstream)
        # the first layer's input is the rows themselves, the same for every member: one GEMM for all
        # members' (out, rows) x (rows, in), ~15% faster than the batched form with the rows expanded
        units, n_inputs = self.members * self.shapes[0][0], self.shapes[0][1]
        if isinstance(inputs, OneHotRows):
            first_layer_gradient(upstream.reshape(units, rows), inputs, self._weight_grads[0].view(units, n_inputs))
        else:
            torch.mm(upstream.reshape(units, rows), inputs, out=self._weight_grads[0].view(units, n_inputs))
        torch.sum(upstream, dim=2, keepdim=True, out=self._bias_grads[0])
        return loss

    @torch.no_grad()
    def predict_mean(self, inputs: torch.Tensor | OneHotRows) -> torch.Tensor:
        """The members' mean output per row, (rows,): self(inputs, training=False).mean(dim=1), computed in
        blocks of PREDICT_BLOCK_ROWS rows in the reused workspace (the same numbers wherever the rows fit
        one block; to float rounding otherwise)."""
        rows = len(inputs)
        means = torch.empty(rows, dtype=self.flat.dtype, device=self.flat.device)
        for start in range(0, rows, self.PREDICT_BLOCK_ROWS):
            block = inputs[start:start + self.PREDICT_BLOCK_ROWS]
            outputs = self._workspace_views(len(block)).outputs
            self._forward_into(block, outputs, None)
            torch.mean(outputs[-1].squeeze(1).T, dim=1, out=means[start:start + len(block)])
        return means

    PREDICT_BLOCK_ROWS = 1024   # bounds the workspace a prediction needs (~8 MB for the default ensemble)

    def _forward_into(self, inputs: torch.Tensor | OneHotRows, outputs: list[torch.Tensor],
                      masks: list[torch.Tensor] | None) -> list[torch.Tensor]:
        """__call__'s forward, each layer's output written into `outputs` (see _workspace_views); the
        inputs of every layer, where the first layer's is a placeholder (its backward reads `inputs`)."""
        layer_inputs = [outputs[0]]
        last = len(self.shapes) - 1
        for k in range(last + 1):
            if k == 0:   # the same rows for every member: one GEMM of all members' rows of weights
                units, n_inputs = self.members * self.shapes[0][0], self.shapes[0][1]
                bias, weight = self._bias_values[0].view(units, 1), self._weight_values[0].view(units, n_inputs)
                out = outputs[0].view(units, len(inputs))
                if isinstance(inputs, OneHotRows):
                    first_layer(weight, bias, inputs, out)
                else:
                    torch.addmm(bias, weight, inputs.T, out=out)
                hidden = outputs[0]
            else:
                hidden = torch.baddbmm(self._bias_values[k], self._weight_values[k], hidden, out=outputs[k])
            if k < last:
                hidden = hidden.relu_()   # in place: nothing here needs the pre-activation
                if masks is not None:
                    hidden = hidden.mul_(masks[k])
                layer_inputs.append(hidden)
        return layer_inputs

    def _workspace_views(self, rows: int) -> _Workspace:
        """Each layer's output (members, out, rows) and each hidden layer's gradient, as views of one
        buffer kept from call to call. Fresh tensors of these sizes (~160 kB a layer for the default
        ensemble's batches, ~600 kB for its validation rows) come from the system as new pages on every
        call, and touching them first cost as much as the arithmetic; the buffer grows to the largest rows
        seen. The views are kept per rows count (making them costs ~10 us a step), separately in and out
        of inference mode: a view made in inference mode cannot be written outside it."""
        key = (rows, torch.is_inference_mode_enabled())
        work = self._views.get(key)
        if work is not None:
            return work
        widths = [out_features for out_features, _ in self.shapes]
        per_row = self.members * (sum(widths) + sum(widths[:-1]))
        if self._workspace.numel() < per_row * rows:
            with torch.inference_mode(False):   # a normal tensor even when grown while predicting
                self._workspace = torch.empty(per_row * rows, dtype=self.flat.dtype, device=self.flat.device)
            self._views.clear()
        if len(self._views) >= 16:   # ranks' shares of batches vary: keep the cache small
            self._views.clear()
        views: list[torch.Tensor] = []
        offset = 0
        for width in widths + widths[:-1]:
            count = self.members * width * rows
            views.append(self._workspace[offset:offset + count].view(self.members, width, rows))
            offset += count
        outputs, upstreams = views[:len(widths)], views[len(widths):]
        work = _Workspace(outputs, upstreams, [output.transpose(1, 2) for output in outputs[:-1]],
                          outputs[-1].view(-1))
        self._views[key] = work
        return work

    def zero_grad(self) -> None:
        self.grad.zero_()   # backward adds into the leaves' .grad, which are views of this buffer

    def release(self) -> None:
        """Gives every parameter of the network its own copy of its values; the stacked view is done."""
        with torch.no_grad():
            for parameter, _, _ in self.parameter_slices:
                parameter.data = parameter.data.clone()
                parameter.grad = None
        self._workspace = torch.empty(0, dtype=self.flat.dtype, device=self.flat.device)
        self._views.clear()

    def _dropout_masks(self, rows: int, like: torch.Tensor) -> list[torch.Tensor]:
        # Member by member, layer by layer: the order in which the modules' forward draws them, with the
        # draw nn.Dropout makes on the CPU (a Bernoulli(1 - p) tensor of the layer's shape, divided by 1 - p).
        keep = 1 - self.dropout
        drawn = [[torch.empty(rows, out_features, dtype=like.dtype, device=like.device).bernoulli_(keep).div_(keep)
                  for out_features, _ in self.shapes[:-1]] for _ in range(self.members)]
        return [torch.stack([member[k].T for member in drawn]) for k in range(len(self.shapes) - 1)]


@dataclass(frozen=True)
class _Workspace:
    """Views of StackedEnsemble's workspace for one rows count: each layer's output (members, out, rows),
    each hidden layer's gradient, the hidden outputs transposed, and the last output flat."""

    outputs: list[torch.Tensor]
    upstreams: list[torch.Tensor]
    transposed: list[torch.Tensor]
    flat_output: torch.Tensor


class FlatAdamW:
    """torch.optim.AdamW (decoupled weight decay, no amsgrad) on a StackedEnsemble's flat buffer, stepped by
    the kernel torch.optim.AdamW(fused=True) runs: ATen's _fused_adamw_, one pass over the buffer where the
    unfused update makes seven (~22 against ~57 us a step for the default ensemble on 2 CPU cores, an
    eighth of a training step). It is called as an operator: constructing a torch.optim optimiser imports
    torch._dynamo (~1.2 s). The numbers are torch's fused AdamW's, the same as its default AdamW's to
    float rounding."""

    def __init__(self, stacked: StackedEnsemble, lr: float, weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.stacked = stacked
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.exp_avg = torch.zeros_like(stacked.flat)
        self.exp_avg_sq = torch.zeros_like(stacked.flat)
        # the kernel reads the step count from a float tensor on the buffer's device (as the fused optimiser
        # keeps it); incremented before each step, as torch.optim does
        self._step = torch.zeros((), dtype=torch.float32, device=stacked.flat.device)
        self.steps = 0

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        self._step.fill_(float(self.steps))
        beta1, beta2 = self.betas
        _FUSED_ADAMW([self.stacked.flat], [self.stacked.grad], [self.exp_avg], [self.exp_avg_sq], [], [self._step],
                     lr=self.lr, beta1=beta1, beta2=beta2, weight_decay=self.weight_decay, eps=self.eps,
                     amsgrad=False, maximize=False)

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


# ATen operators, resolved once (torch.ops lookups cost ~1 us): autograd's ReLU backward (out= form) and the
# fused AdamW kernel (its "_" marks it as torch.optim's building block, called here as torch.optim calls it)
_THRESHOLD_BACKWARD = torch.ops.aten.threshold_backward.grad_input
_FUSED_ADAMW = torch.ops.aten._fused_adamw_.default


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
