"""The encoders a twin model (TF4CTR and its plug-in presets, DualMLP) is built from: a library model's
body, its representation before its logit layer (width 1 for LR and FM, whose body is their logit).

Config: `model.params.simple_encoder` / `complex_encoder`, a mapping {name: <encoder>, <its keys>}:

    MLP   the side's MLP block, hidden layers mlp_s_hidden / mlp_c_hidden (model.params); no keys
    LR    Σ_i w_i: per-field first-order weights over the raw ids (no bias: the auxiliary head has one);
          reads no embedding, width 1 (WideDeep's wide part)
    FM    Σ_i w_i + b + Σ_{i<j} <e_i, e_j> over the side's embedding, per sample; width 1
          (DeepFM's FM; the authors' plug-in sums the pair term over the batch, REFERENCE.md
          "Our decisions" 2)
    CIN   xDeepFM's CIN over the side's embedding, its pooled feature maps (width sum of
          cin_hidden_units, the body without CIN's Linear); keys cin_hidden_units [16, 16, 16],
          output_dim (unset; a width: CIN's Linear to it, as the authors' xDeepFM plug-in)
    CrossNet    DCN's cross network over the side's embedding, its last x_l (width of e); key
                num_cross_layers 3
    CrossNetV2  DCNv2's (full rank, or the low-rank mixture); keys num_cross_layers 3,
                use_low_rank_mixture false, low_rank 32, num_experts 4

Add one with `register_encoder` (docs/plugin.md has a user's own encoder in 20 lines):

    @register_encoder("Mine", MineParams)      # MineParams: a dataclass of its keys (EncoderParams)
    class Mine(TwinEncoder):
        def __init__(self, params: MineParams, inp: EncoderInput): ...; self.output_dim = ...
        def forward(self, e: Tensor, tables: dict[str, Tensor]) -> Tensor: ...   # [B, output_dim]
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Optional

from torch import Tensor, nn

from ..config import from_mapping
from ..errors import InputError
from ..layers.cin import CompressedInteractionNet
from ..layers.cross import CrossNet, CrossNetMix, CrossNetV2
from ..layers.init import reset_linear_layers_
from ..layers.mlp import MLPBlock
from ..layers.shallow import LogisticRegression, fm_second_order
from .base import by_field


@dataclass
class EncoderParams:
    """Base of an encoder's own keys (the spec mapping less `name`); `check` as ModelParams.check."""

    def check(self, require: Callable[[bool, str, str], None]) -> None:
        """Call require(ok, key, what) per rule."""


@dataclass(frozen=True)
class EncoderInput:
    """What an encoder is built over: its side's SSEM output e [B, width] = F fields of field_dim side by
    side, that side's MLP widths (model.params mlp_s_hidden / mlp_c_hidden), and the shared keys."""

    width: int
    num_fields: int
    mlp_hidden: tuple[int, ...]
    batch_norm: bool
    dropout: float

    @property
    def field_dim(self) -> int:
        return self.width // self.num_fields


class TwinEncoder(nn.Module):
    """forward(e [B, width], tables) -> h [B, output_dim]. `table_kinds` (kind -> dim): tables the encoder
    reads itself (looked up with the SSEM's, handed over in `tables` by kind); `reads_embedding` False:
    e is not read (the SSEM's side is then unused). `prefix`: the model's attribute is <prefix>_s /
    <prefix>_c."""

    name: ClassVar[str]
    Params: ClassVar[type]
    table_kinds: ClassVar[dict[str, int]] = {}
    reads_embedding: ClassVar[bool] = True
    prefix: ClassVar[str] = "encoder"
    output_dim: int

    def forward(self, e: Tensor, tables: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError


_ENCODERS: dict[str, type[TwinEncoder]] = {}


def register_encoder(name: str, params: type[EncoderParams]) -> Callable[[type[TwinEncoder]], type[TwinEncoder]]:
    """Class decorator: the encoder `name` (config {name: ...}), configured by the dataclass `params`."""

    def add(cls: type[TwinEncoder]) -> type[TwinEncoder]:
        if name in _ENCODERS:
            raise ValueError(f"encoder {name!r} is registered twice")
        cls.name, cls.Params = name, params
        _ENCODERS[name] = cls
        return cls

    return add


def encoder_names() -> list[str]:
    return list(_ENCODERS)


def encoder_spec(spec: Mapping[str, Any], key: str) -> tuple[type[TwinEncoder], EncoderParams]:
    """(encoder class, its checked parameters) of a config mapping; errors name model.params.<key>[.<k>]."""
    where = f"model.params.{key}"
    name = spec.get("name")
    if name not in _ENCODERS:
        raise InputError(f"config key '{where}.name': must be one of {', '.join(_ENCODERS)}, got {name!r}")
    cls = _ENCODERS[name]
    data = {k: v for k, v in spec.items() if k != "name"}
    known = {f.name for f in dataclasses.fields(cls.Params)}
    for k in data:
        if k not in known:
            has = f"its keys: {', '.join(sorted(known))}" if known else "it has no keys but name"
            raise InputError(f"config key '{where}.{k}' is unknown for encoder {name} ({has})")
    params = from_mapping(cls.Params, data, where)

    def require(ok: bool, k: str, what: str) -> None:
        if not ok:
            raise InputError(f"config key '{where}.{k}': {what} (encoder {name}), got {getattr(params, k)!r}")

    params.check(require)
    return cls, params


@dataclass
class NoKeys(EncoderParams):
    """The encoder has no keys of its own."""


@register_encoder("MLP", NoKeys)
class MLPEncoder(TwinEncoder):
    """The side's MLP block (its state-dict keys are a plain TF4CTR's mlp_s.layers.* / mlp_c.layers.*)."""

    prefix = "mlp"

    def __init__(self, params: NoKeys, inp: EncoderInput):
        super().__init__()
        block = MLPBlock(inp.width, inp.mlp_hidden, inp.batch_norm, inp.dropout)
        self.layers, self.output_dim = block.layers, block.output_dim

    def forward(self, e: Tensor, tables: dict[str, Tensor]) -> Tensor:
        return self.layers(e)


@register_encoder("LR", NoKeys)
class LREncoder(TwinEncoder):
    """Σ_i w_i over the raw ids, no bias: [B, 1]."""

    table_kinds, reads_embedding, prefix = {"lr": 1}, False, "lr"
    output_dim = 1

    def __init__(self, params: NoKeys, inp: EncoderInput):
        super().__init__()
        self.lr = LogisticRegression(use_bias=False)

    def forward(self, e: Tensor, tables: dict[str, Tensor]) -> Tensor:
        return self.lr(tables["lr"])


@register_encoder("FM", NoKeys)
class FMEncoder(TwinEncoder):
    """FuxiCTR's FactorizationMachine: Σ_i w_i + b (own first-order weights over the ids) + the pair
    term over e, per sample: [B, 1]."""

    table_kinds, prefix = {"lr": 1}, "fm"
    output_dim = 1

    def __init__(self, params: NoKeys, inp: EncoderInput):
        super().__init__()
        self.lr = LogisticRegression(use_bias=True)
        self.field_dim = inp.field_dim

    def forward(self, e: Tensor, tables: dict[str, Tensor]) -> Tensor:
        return self.lr(tables["lr"]) + fm_second_order(by_field(e, self.field_dim))


@dataclass
class CINKeys(EncoderParams):
    cin_hidden_units: list[int] = field(default_factory=lambda: [16, 16, 16])
    # None: the pooled maps are h. A width: CIN's Linear to that width is h (the authors' xDeepFM plug-in
    # maps to the complex MLP's last width).
    output_dim: Optional[int] = None

    def check(self, require) -> None:
        require(bool(self.cin_hidden_units) and all(u >= 1 for u in self.cin_hidden_units), "cin_hidden_units",
                "must be a non-empty list of widths >= 1")
        require(self.output_dim is None or self.output_dim >= 1, "output_dim", "must be unset or at least 1")


@register_encoder("CIN", CINKeys)
class CINEncoder(TwinEncoder):
    """xDeepFM's CIN over e: its pooled feature maps [B, sum(cin_hidden_units)], or their Linear to
    output_dim."""

    prefix = "cin"

    def __init__(self, params: CINKeys, inp: EncoderInput):
        super().__init__()
        self.cin = CompressedInteractionNet(inp.num_fields, params.cin_hidden_units, output_dim=params.output_dim)
        reset_linear_layers_(self.cin)
        self.field_dim, self.output_dim = inp.field_dim, self.cin.output_dim

    def forward(self, e: Tensor, tables: dict[str, Tensor]) -> Tensor:
        return self.cin(by_field(e, self.field_dim))


@dataclass
class CrossKeys(EncoderParams):
    num_cross_layers: int = 3

    def check(self, require) -> None:
        require(self.num_cross_layers >= 1, "num_cross_layers", "must be at least 1")


@dataclass
class CrossV2Keys(CrossKeys):
    use_low_rank_mixture: bool = False
    low_rank: int = 32
    num_experts: int = 4

    def check(self, require) -> None:
        super().check(require)
        require(self.low_rank >= 1, "low_rank", "must be at least 1")
        require(self.num_experts >= 1, "num_experts", "must be at least 1")


@register_encoder("CrossNet", CrossKeys)
class CrossNetEncoder(TwinEncoder):
    """DCN's cross network over e: its last x_l, [B, width]."""

    prefix = "crossnet"

    def __init__(self, params: CrossKeys, inp: EncoderInput):
        super().__init__()
        self.crossnet = self.cross_network(params, inp.width)
        reset_linear_layers_(self.crossnet)   # as DCN / DCNv2 initialise theirs
        self.output_dim = inp.width

    @staticmethod
    def cross_network(params: CrossKeys, width: int) -> nn.Module:
        return CrossNet(width, params.num_cross_layers)

    def forward(self, e: Tensor, tables: dict[str, Tensor]) -> Tensor:
        return self.crossnet(e)


@register_encoder("CrossNetV2", CrossV2Keys)
class CrossNetV2Encoder(CrossNetEncoder):
    """DCNv2's cross network over e (full rank or its low-rank mixture): its last x_l, [B, width]."""

    @staticmethod
    def cross_network(params: CrossV2Keys, width: int) -> nn.Module:
        if params.use_low_rank_mixture:
            return CrossNetMix(width, params.num_cross_layers, params.low_rank, params.num_experts)
        return CrossNetV2(width, params.num_cross_layers)
