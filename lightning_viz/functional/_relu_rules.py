"""A ReLU whose backward follows a visualization rule, applied to every ReLU a forward runs.

The rule replaces the backward pass of every ReLU the forward runs: ``nn.ReLU`` modules (in-place
and reused ones) and ``F.relu`` / ``torch.relu`` / ``Tensor.relu(_)`` calls alike, through a
``TorchFunctionMode`` active for the forward only.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

Rule = Literal["deconvnet", "guided", "gradient"]
RULES = ("deconvnet", "guided", "gradient")

_RELU_CALLS = {F.relu, torch.relu, Tensor.relu}
_INPLACE_RELU_CALLS = {torch.relu_, Tensor.relu_}
_RULELESS_ACTIVATIONS = {
    F.gelu: "GELU",
    F.silu: "SiLU",
    F.mish: "Mish",
    F.hardswish: "Hardswish",
    F.hardsigmoid: "Hardsigmoid",
    F.hardtanh: "Hardtanh/ReLU6",
    F.relu6: "ReLU6",
    F.leaky_relu: "LeakyReLU",
    F.elu: "ELU",
    F.selu: "SELU",
    F.celu: "CELU",
    F.softplus: "Softplus",
    F.prelu: "PReLU",
    F.rrelu: "RReLU",
}


class RulelessActivationWarning(UserWarning):
    """Activations without a visualization rule ran in a projection: plain gradients there."""


class _RuleReLU(torch.autograd.Function):
    """ReLU whose backward follows a visualization rule instead of the true derivative."""

    @staticmethod
    def forward(x: Tensor, rule: str, inplace: bool) -> Tensor:
        return x.relu_() if inplace else x.relu()

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, rule, inplace = inputs
        ctx.rule = rule
        if inplace:
            ctx.mark_dirty(x)
        # deconvnet's backward needs nothing, but a plain ReLU saves its output: activation
        # checkpointing recomputes a block with plain ReLUs and checks that what they save
        # matches what was saved here (the rule's backward, recorded here, is what runs)
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad: Tensor):
        if ctx.rule == "deconvnet":
            return grad.clamp(min=0), None, None
        (output,) = ctx.saved_tensors
        passed = grad.clamp(min=0) if ctx.rule == "guided" else grad
        return passed * (output > 0), None, None


class _ReLURuleMode(TorchFunctionMode):
    """Route every ReLU call through :class:`_RuleReLU`; note activations that have no rule."""

    def __init__(self, rule: str) -> None:
        super().__init__()
        self.rule = rule
        self.ruleless: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU_CALLS:
            return _RuleReLU.apply(args[0], self.rule, bool(kwargs.get("inplace", False)))
        if func in _INPLACE_RELU_CALLS:
            return _RuleReLU.apply(args[0], self.rule, True)
        if func in _RULELESS_ACTIVATIONS:
            self.ruleless.add(_RULELESS_ACTIVATIONS[func])
        return func(*args, **kwargs)


@contextmanager
def relu_rule(rule: Rule) -> Iterator[set[str]]:
    """Apply ``rule`` to the backward of every ReLU run inside the block.

    Yields the set of activation names without a rule that ran (they pass plain gradients).
    ``rule="gradient"`` changes nothing.
    """
    if rule == "gradient":
        yield set()
        return
    mode = _ReLURuleMode(rule)
    with mode:
        yield mode.ruleless


def no_rule_for(ruleless: Iterable[str], rule: str) -> tuple[str, str]:
    """("GELU has no guided rule" or "GELU, SiLU have no guided rule", "it" or "them")."""
    names = sorted(ruleless)
    one = len(names) == 1
    return f"{', '.join(names)} {'has' if one else 'have'} no {rule} rule", "it" if one else "them"


@contextmanager
def ruleless_said() -> Iterator[None]:
    """Silence :class:`RulelessActivationWarning` in the block: the calling view named those
    activations once per fit already (and in its legends), not at every pass."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RulelessActivationWarning)
        yield


def warn_ruleless(ruleless: set[str], rule: str) -> None:
    """One warning naming the activations that ran without a ``rule`` (plain gradients there)."""
    if ruleless:
        warnings.warn(
            f"{no_rule_for(ruleless, rule)[0]}: gradients pass through unchanged there",
            RulelessActivationWarning,
            stacklevel=4,
        )
