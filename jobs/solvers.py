"""Solvers: the optimiser for each SolverType and DIGITS' learning-rate policies.

The learning rate is a pure function of training progress (0..1 of all solver steps), exactly
as documented on jobs.specs.LrPolicySpec, so schedules can be checked against hand-computed
values; `build_scheduler` applies it per solver step through a LambdaLR whose state (a step
count) resumes with the run. Biases get DIGITS' per-network `lr_mult`/`decay_mult`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from jobs.specs import LrPolicySpec, LrPolicyType, SolverSpec, SolverType


def lr_factor(policy: LrPolicySpec, progress: float) -> float:
    """The learning rate over the base rate at `progress` (0..1) through training.

    With p = 100 * progress: fixed 1; step gamma^floor(p / stepSize); multistep gamma^(steps
    passed); exp gamma^p; inv (1 + gamma p)^-power; poly (1 - p/100)^power;
    sigmoid 1 / (1 + exp(gamma (p - stepSize))).
    """
    p = 100.0 * min(max(progress, 0.0), 1.0)
    gamma = policy.effective_gamma()
    power = policy.effective_power()
    kind = policy.policy
    if kind == LrPolicyType.FIXED:
        return 1.0
    if kind == LrPolicyType.STEP:
        # A tiny tolerance so 100 * 33 / 100 lands on the step, not just below it.
        return float(gamma ** math.floor(p / policy.step_size + 1e-9))
    if kind == LrPolicyType.MULTISTEP:
        return float(gamma ** sum(1 for v in policy.step_values if p + 1e-9 >= v))
    if kind == LrPolicyType.EXP:
        return float(gamma**p)
    if kind == LrPolicyType.INV:
        return float((1.0 + gamma * p) ** -power)
    if kind == LrPolicyType.POLY:
        return float(max(0.0, 1.0 - p / 100.0) ** power)
    if kind == LrPolicyType.SIGMOID:
        exponent = gamma * (p - policy.step_size)
        return 0.0 if exponent > 700 else 1.0 / (1.0 + math.exp(exponent))
    raise ValueError(f"unknown learning-rate policy {kind!r}")


def learning_rate(solver: SolverSpec, progress: float) -> float:
    return solver.base_lr * lr_factor(solver.lr_policy, progress)


def param_groups(
    model: nn.Module, weight_decay: float, bias_lr_mult: float = 1.0, bias_decay_mult: float = 1.0
) -> list[dict[str, Any]]:
    """Weights and biases as two groups, the biases with Caffe's lr and decay multipliers."""
    weights: list[nn.Parameter] = []
    biases: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (biases if name.endswith("bias") else weights).append(param)
    groups: list[dict[str, Any]] = [
        {"params": weights, "weight_decay": weight_decay, "lr_mult": 1.0}
    ]
    if biases:
        groups.append(
            {
                "params": biases,
                "weight_decay": weight_decay * bias_decay_mult,
                "lr_mult": bias_lr_mult,
            }
        )
    return groups


def build_optimizer(
    params: Iterable[nn.Parameter] | list[dict[str, Any]], solver: SolverSpec
) -> torch.optim.Optimizer:
    """The optimiser for `solver.type`; a group's `lr_mult` scales the base rate."""
    args: list[Any] = list(params)
    if args and isinstance(args[0], dict):
        args = [{**g, "lr": solver.base_lr * float(g.get("lr_mult", 1.0))} for g in args]
    lr, wd, momentum = solver.base_lr, solver.weight_decay, solver.momentum
    kind = solver.type
    if kind == SolverType.SGD:
        return torch.optim.SGD(args, lr=lr, momentum=momentum, weight_decay=wd)
    if kind == SolverType.NESTEROV:
        return torch.optim.SGD(args, lr=lr, momentum=momentum, weight_decay=wd, nesterov=True)
    if kind == SolverType.ADAGRAD:
        return torch.optim.Adagrad(args, lr=lr, weight_decay=wd)
    if kind == SolverType.RMSPROP:
        return torch.optim.RMSprop(
            args, lr=lr, alpha=solver.rms_decay, momentum=momentum, weight_decay=wd
        )
    if kind == SolverType.ADADELTA:
        return torch.optim.Adadelta(args, lr=lr, weight_decay=wd)
    if kind == SolverType.ADAM:
        return torch.optim.Adam(args, lr=lr, weight_decay=wd)
    if kind == SolverType.ADAMW:
        return torch.optim.AdamW(args, lr=lr, weight_decay=wd)
    raise ValueError(f"unknown solver type {kind!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, policy: LrPolicySpec, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Steps once per solver step; the rate at step s is base * lr_factor(s / total_steps)."""
    total = max(1, total_steps)

    def factor(step: int) -> float:
        return lr_factor(policy, step / total)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
