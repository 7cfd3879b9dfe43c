"""Solvers and DIGITS' learning-rate policies, checked against hand-computed schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from jobs.solvers import (
    build_optimizer,
    build_scheduler,
    learning_rate,
    lr_factor,
    param_groups,
)
from jobs.specs import LrPolicySpec, LrPolicyType, SolverSpec, SolverType


def _policy(kind: str, **kwargs: object) -> LrPolicySpec:
    return LrPolicySpec.model_validate({"policy": kind, **kwargs})


@pytest.mark.parametrize("solver_type", list(SolverType))
def test_each_solver_builds_and_steps(solver_type: SolverType) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    base_lr = {SolverType.ADADELTA: 1.0, SolverType.ADAGRAD: 0.1}.get(solver_type, 0.01)
    solver = SolverSpec(type=solver_type, base_lr=base_lr)
    optimizer = build_optimizer(model.parameters(), solver)
    before = [p.detach().clone() for p in model.parameters()]
    inputs, targets = torch.randn(16, 4), torch.randint(0, 2, (16,))
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert losses[-1] < losses[0], f"{solver_type.value} did not reduce the loss: {losses}"


def test_solver_types_map_to_torch_optimizers() -> None:
    params = [nn.Parameter(torch.zeros(2))]
    expected = {
        SolverType.SGD: torch.optim.SGD,
        SolverType.NESTEROV: torch.optim.SGD,
        SolverType.ADAGRAD: torch.optim.Adagrad,
        SolverType.RMSPROP: torch.optim.RMSprop,
        SolverType.ADADELTA: torch.optim.Adadelta,
        SolverType.ADAM: torch.optim.Adam,
        SolverType.ADAMW: torch.optim.AdamW,
    }
    for kind, cls in expected.items():
        optimizer = build_optimizer(params, SolverSpec(type=kind, momentum=0.8, weight_decay=0.01))
        assert type(optimizer) is cls
        group = optimizer.param_groups[0]
        assert group["lr"] == 0.01 and group["weight_decay"] == 0.01
    nesterov = build_optimizer(params, SolverSpec(type=SolverType.NESTEROV, momentum=0.8))
    assert nesterov.param_groups[0]["nesterov"] is True
    assert nesterov.param_groups[0]["momentum"] == 0.8
    rms = build_optimizer(params, SolverSpec(type=SolverType.RMSPROP, rms_decay=0.95))
    assert rms.param_groups[0]["alpha"] == 0.95


def test_solver_type_is_case_insensitive() -> None:
    assert SolverSpec.model_validate({"type": "ADAM"}).type == SolverType.ADAM


def test_bias_multipliers_follow_digits() -> None:
    model = nn.Linear(3, 2)
    groups = param_groups(model, weight_decay=1e-4, bias_lr_mult=2.0, bias_decay_mult=0.0)
    optimizer = build_optimizer(groups, SolverSpec(base_lr=0.05))
    weights, biases = optimizer.param_groups
    assert weights["lr"] == pytest.approx(0.05) and weights["weight_decay"] == pytest.approx(1e-4)
    assert biases["lr"] == pytest.approx(0.1) and biases["weight_decay"] == 0.0
    assert biases["params"][0] is model.bias


# Hand-computed: p is the % of training done.
@pytest.mark.parametrize(
    ("policy", "progress", "expected"),
    [
        (_policy("fixed"), 0.0, 1.0),
        (_policy("fixed"), 0.99, 1.0),
        # step: gamma 0.1, stepSize 33: drops at 33% and 66% and 99%
        (_policy("step"), 0.0, 1.0),
        (_policy("step"), 0.3299, 1.0),
        (_policy("step"), 0.33, 0.1),
        (_policy("step"), 0.5, 0.1),
        (_policy("step"), 0.66, 0.01),
        (_policy("step"), 0.99, 0.001),
        (_policy("step", stepSize=25, gamma=0.5), 0.6, 0.25),
        # multistep: gamma 0.5 at 50% and 85%
        (_policy("multistep"), 0.49, 1.0),
        (_policy("multistep"), 0.5, 0.5),
        (_policy("multistep"), 0.84, 0.5),
        (_policy("multistep"), 0.85, 0.25),
        (_policy("multistep", stepValues=[10, 20, 30], gamma=0.1), 0.25, 0.01),
        # exp: gamma^p, gamma 0.95
        (_policy("exp"), 0.0, 1.0),
        (_policy("exp"), 0.1, 0.95**10),
        (_policy("exp"), 0.5, 0.95**50),
        # inv: (1 + 0.1 p)^-0.5
        (_policy("inv"), 0.0, 1.0),
        (_policy("inv"), 0.3, 0.5),  # (1 + 3)^-0.5
        (_policy("inv"), 0.8, 1 / 3),  # (1 + 8)^-0.5
        # poly: (1 - p/100)^3
        (_policy("poly"), 0.0, 1.0),
        (_policy("poly"), 0.5, 0.125),
        (_policy("poly"), 1.0, 0.0),
        (_policy("poly", power=1.0), 0.25, 0.75),
        # sigmoid: 1 / (1 + exp(0.1 (p - 33)))
        (_policy("sigmoid"), 0.33, 0.5),
        (_policy("sigmoid"), 0.0, 1 / (1 + math.exp(-3.3))),
        (_policy("sigmoid"), 0.53, 1 / (1 + math.exp(2.0))),
    ],
)
def test_lr_policy_against_hand_computed_values(
    policy: LrPolicySpec, progress: float, expected: float
) -> None:
    assert lr_factor(policy, progress) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_scheduler_follows_the_policy_per_solver_step() -> None:
    model = nn.Linear(2, 2)
    solver = SolverSpec(base_lr=0.01, lr_policy=_policy("step", stepSize=25, gamma=0.1))
    optimizer = build_optimizer(model.parameters(), solver)
    scheduler = build_scheduler(optimizer, solver.lr_policy, total_steps=8)
    seen = []
    for _ in range(8):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # 8 steps, a drop every 25% = every 2 steps
    assert seen == pytest.approx([0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])
    assert learning_rate(solver, 0.5) == pytest.approx(1e-4)


def test_scheduler_state_resumes_the_schedule() -> None:
    policy = _policy("exp", gamma=0.9)
    solver = SolverSpec(base_lr=1.0, lr_policy=policy)
    first = build_optimizer(nn.Linear(2, 2).parameters(), solver)
    scheduler = build_scheduler(first, policy, total_steps=100)
    for _ in range(30):
        first.step()
        scheduler.step()
    state = scheduler.state_dict()
    second = build_optimizer(nn.Linear(2, 2).parameters(), solver)
    resumed = build_scheduler(second, policy, total_steps=100)
    resumed.load_state_dict(state)
    second.step()
    resumed.step()
    assert second.param_groups[0]["lr"] == pytest.approx(0.9**31)


def test_policy_defaults_are_digits_form_defaults() -> None:
    assert _policy("step").effective_gamma() == 0.1
    assert _policy("multistep").effective_gamma() == 0.5
    assert _policy("exp").effective_gamma() == 0.95
    assert _policy("inv").effective_power() == 0.5
    assert _policy("poly").effective_power() == 3.0
    assert LrPolicySpec().policy == LrPolicyType.STEP
