"""What every model is: the CTRModel base class, the base of the typed parameter dataclasses, and
what a model is built from (ModelParts)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..features import ModelInput
from ..layers.embedding import FieldTables, InputFields, TableSettings, build_field_tables
from ..losses import BCELoss, CTRLoss, LossParams


@dataclass
class ModelParams:
    """Base of each model's own parameters (config `model.params`). Subclasses are dataclasses whose
    fields are the keys, typed, with FuxiCTR's model_zoo defaults; `check` adds the range checks the
    types cannot express."""

    def check(self, require: Callable[[bool, str, str], None]) -> None:
        """Call require(ok, key, what) per rule; a failed rule raises InputError naming the key."""

    def check_with_shared(self, shared: ModelConfig, require: Callable[[bool, str, str], None]) -> None:
        """Rules that also read the shared keys (model.*), e.g. a head count that must divide
        model.embedding_dim; checked at config load like `check`."""


def check_widths(require: Callable[[bool, str, str], None], params: ModelParams, *keys: str) -> None:
    """Every hidden width under these keys is at least 1."""
    for key in keys:
        require(all(units >= 1 for units in getattr(params, key)), key, "every hidden width must be at least 1")


def by_field(flat: Tensor, dim: int) -> Tensor:
    """[B, F * dim] field embeddings side by side -> [B, F, dim]."""
    return flat.view(flat.shape[0], -1, dim)


@dataclass(frozen=True)
class ModelParts:
    """What a model's constructor gets besides its parameters: the shared keys (model.*), the input
    fields, and how to make its field tables (`tables(kinds)`: one FieldTables on the run's backend)."""

    shared: ModelConfig
    fields: InputFields
    table_settings: TableSettings

    def tables(self, kinds: dict[str, int]) -> FieldTables:
        return build_field_tables(self.fields, kinds, self.table_settings)

    @property
    def num_fields(self) -> int:
        return self.fields.num_fields


class CTRModel(nn.Module):
    """The model contract (docs/ARCHITECTURE.md "Model contract"):

        model(x)                 -> {"logit": [B]} (+ model-specific extras)
        model(x, y)              -> the same plus "loss": the CTR loss (and any auxiliary loss), no
                                    regularizer. Call the DistributedModelParallel wrapper this way.
        model.loss(x, y)         -> {"loss", "logit"}
        model.regularization()   -> the embedding L2 of the model's field tables
        model.dense_parameters() -> what the trainer's torch optimizer updates (not fused tables)
        model.sparse_optimizer() -> the fused tables' KeyedOptimizer, None on the reference backend

    x: ids [B, F], or tf4ctr_fast.features.Features when the model has multi-valued fields.
    A subclass builds its layers in __init__(params, parts) and implements `logit(x)`; a model with
    another loss overrides `forward`. The CTR loss is `ctr_loss` (config model.loss, tf4ctr_fast.losses),
    given by build_model through `use_loss`; `default_loss` names the model's own.
    """

    name: ClassVar[str]              # set by models.registry.register
    Params: ClassVar[type]
    default_loss: ClassVar[str] = "bce"
    twin: ClassVar[bool] = False     # has auxiliary logits z_s, z_c (what the twin_focus loss needs)
    ctr_loss: CTRLoss = BCELoss(LossParams())

    def use_loss(self, loss: CTRLoss) -> None:
        """Train on `loss` (build_model calls this once, right after the constructor)."""
        self.ctr_loss = loss

    def logit(self, x: ModelInput) -> Tensor:
        raise NotImplementedError

    def forward(self, x: ModelInput, y: Optional[Tensor] = None) -> dict[str, Tensor]:
        out = {"logit": self.logit(x)}
        if y is not None:
            out["loss"] = self.ctr_loss(out["logit"], y)
        return out

    def loss(self, x: ModelInput, y: Tensor) -> dict[str, Tensor]:
        out = self(x, y)
        return {"loss": out["loss"], "logit": out["logit"]}

    def field_tables(self) -> list[FieldTables]:
        return [m for m in self.modules() if isinstance(m, FieldTables)]

    def regularization(self) -> Tensor:
        terms = [tables.regularization() for tables in self.field_tables()]
        return sum(terms[1:], terms[0]) if terms else torch.zeros(())

    def dense_parameters(self) -> list[nn.Parameter]:
        fused = {id(p) for tables in self.field_tables() for p in tables.sparse_parameters()}
        return [p for p in self.parameters() if id(p) not in fused]

    def sparse_optimizer(self) -> Optional[Any]:
        optimizers = [o for o in (t.sparse_optimizer() for t in self.field_tables()) if o is not None]
        if len(optimizers) > 1:
            # One EmbeddingBagCollection per model: one kernel launch, one optimizer, one shard plan.
            raise ValueError(f"model {self.name}: more than one set of fused tables; ask for every table "
                             "kind in one parts.tables(...) call")
        return optimizers[0] if optimizers else None
