"""The CTR losses a model can train on (config `model.loss`, parameters `model.loss_params`).

    bce         mean_i bce(p_i, y_i)                                  (log loss; every baseline's default)
    focal       mean_i α_t,i · bce(p_i, y_i) · (1 − p_t,i)^γ          (Lin et al. 2017; α_t = α for
                positives, 1 − α for negatives; loss_params alpha 0.25, gamma 2)
    rce         mean_i bce(p_i, y_i) · sg(p_t,i)^α                    (R-CE, Wang et al. WSDM 2021; the weight
                is detached: sg = stop-gradient; loss_params alpha 0.25)
    twin_focus  mean_i bce(p_i, y_i) + the Twin Focus loss on the auxiliary logits (twin models only; its
                α, c, γ are the twin model's model.params, REFERENCE.md "Twin Focus loss")

p = σ(logit), p_t = y·p + (1 − y)·(1 − p). Every loss is taken on probabilities, in float32 at least,
like the reference log loss (reference/loss.py), so `bce` is exactly the loss every model trained on
before this registry.

On a twin model (TF4CTR and its plug-in presets, DualMLP) `model.loss` is the loss of the fused logit z;
only `twin_focus` adds the auxiliary terms on z_s and z_c. So `bce`, `focal` and `rce` replace ALL of
TF4CTR's loss (the fused-logit BCE and the Twin Focus terms): the twin network trained like a baseline,
which is the comparison of the paper's Table V (docs/models.md "Losses").
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import Tensor

from .config import from_mapping
from .errors import InputError
from .reference.loss import bce_prob, full_precision, logloss, no_autocast, prob_of_label


@dataclass
class LossParams:
    """Base of each loss's parameters (config `model.loss_params`)."""

    def check(self, require: Callable[[bool, str, str], None]) -> None:
        """Call require(ok, key, what) per rule."""


@dataclass
class FocalParams(LossParams):
    alpha: float = 0.25   # class weight of the positives (negatives: 1 - alpha)
    gamma: float = 2.0

    def check(self, require) -> None:
        require(0 <= self.alpha <= 1, "alpha", "must be in [0, 1]")
        require(self.gamma >= 0, "gamma", "must be >= 0")


@dataclass
class RCEParams(LossParams):
    alpha: float = 0.25   # exponent of the detached weight p_t^alpha

    def check(self, require) -> None:
        require(self.alpha >= 0, "alpha", "must be >= 0")


class CTRLoss:
    """loss(logit [B], y [B]) -> the mean loss (a scalar). `twin`: the loss also has terms on a twin
    model's auxiliary logits (the twin head adds them; only `twin_focus`)."""

    name: ClassVar[str]
    Params: ClassVar[type] = LossParams
    twin: ClassVar[bool] = False

    def __init__(self, params: LossParams):
        self.params = params

    def __call__(self, logit: Tensor, y: Tensor) -> Tensor:
        with no_autocast(logit):
            logit, y = full_precision(logit, y)
            p = torch.sigmoid(logit)
            return (bce_prob(p, y) * self.weight(p, y)).mean()

    def weight(self, p: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{self.name}({self.params})"


class BCELoss(CTRLoss):
    name = "bce"

    def __call__(self, logit: Tensor, y: Tensor) -> Tensor:
        return logloss(logit, y)


class FocalLoss(CTRLoss):
    name, Params = "focal", FocalParams

    def weight(self, p: Tensor, y: Tensor) -> Tensor:
        alpha_t = y * self.params.alpha + (1 - y) * (1 - self.params.alpha)
        return alpha_t * (1 - prob_of_label(p, y)) ** self.params.gamma


class RCELoss(CTRLoss):
    name, Params = "rce", RCEParams

    def weight(self, p: Tensor, y: Tensor) -> Tensor:
        return prob_of_label(p.detach(), y) ** self.params.alpha


class TwinFocusLoss(BCELoss):
    """On the fused logit: the log loss; the twin head adds the Twin Focus terms (reference/loss.py
    total_loss, or the fused op) with the twin model's alpha, c, gamma."""

    name, twin = "twin_focus", True


LOSSES: dict[str, type[CTRLoss]] = {cls.name: cls for cls in (BCELoss, FocalLoss, RCELoss, TwinFocusLoss)}


def build_loss(name: str, params: Mapping[str, Any] = (), *, twin_model: bool = False,
               model_name: str = "") -> CTRLoss:
    """The loss `name` with its parameters checked (errors name `model.loss` / `model.loss_params.<key>`).
    twin_model: whether the model has auxiliary logits (twin_focus needs them)."""
    if name not in LOSSES:
        raise InputError(f"config key 'model.loss': unknown loss {name!r} (known: {', '.join(LOSSES)})")
    cls = LOSSES[name]
    if cls.twin and not twin_model:
        raise InputError(f"config key 'model.loss': {name} needs a twin model (auxiliary logits z_s, z_c); "
                         f"model {model_name!r} has none")
    data = dict(params or {})
    known = {f.name for f in dataclasses.fields(cls.Params)}
    unknown = sorted(set(data) - known)
    if unknown:
        has = f"its keys: {', '.join(sorted(known))}" if known else "it has no parameters"
        raise InputError(f"config key 'model.loss_params.{unknown[0]}' is unknown for loss {name} ({has})")
    loss_params = from_mapping(cls.Params, data, "model.loss_params")

    def require(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise InputError(f"config key 'model.loss_params.{key}': {what} (loss {name}), "
                             f"got {getattr(loss_params, key)!r}")

    loss_params.check(require)
    return cls(loss_params)


def loss_rules_rows() -> list[str]:
    """docs/config.md rows of every loss's parameters (read off the checks, like the model rules)."""
    rows = []
    for name, cls in LOSSES.items():
        params, rules = cls.Params(), []
        params.check(lambda ok, key, what: rules.append((key, what)))
        rows += [f"| `model.loss_params.{key}` | loss {name} | {what} | `{getattr(params, key)!r}` |"
                 for key, what in rules]
    return rows
