"""Weights between the two embedding backends.

copy_weights(src, dst): any model, same config but model.backend: every field table through the
backend-neutral FieldTables.field_weights(), every other tensor by its state-dict key.
reference_to_engine_state_dict / engine_to_reference_state_dict: TF4CTR with SSEM SER at the
state-dict level (for checkpoints).
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import Tensor, nn

from ..layers.embedding import FieldTables


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """dst's weights := src's (same model, either backend on either side)."""
    src_tables = {name: m for name, m in src.named_modules() if isinstance(m, FieldTables)}
    dst_tables = {name: m for name, m in dst.named_modules() if isinstance(m, FieldTables)}
    if src_tables.keys() != dst_tables.keys():
        raise ValueError(f"different field tables: {sorted(src_tables)} vs {sorted(dst_tables)}")
    with torch.no_grad():
        for name, tables in src_tables.items():
            target = dst_tables[name].field_weights()
            for key, weight in tables.field_weights().items():
                target[key].copy_(weight)
    table_keys = {f"{name}.{key}" if name else key for name, m in dst_tables.items() for key in m.state_dict()}
    rest = {k: v for k, v in src.state_dict().items() if not _under_any(k, src_tables)}
    missing = dst.load_state_dict(rest, strict=False).missing_keys
    if set(missing) - table_keys:
        raise ValueError(f"weights missing in the source model: {sorted(set(missing) - table_keys)[:5]}")


def _under_any(key: str, prefixes: dict) -> bool:
    return any(key.startswith(f"{p}.") if p else True for p in prefixes)


_REFERENCE_SER_KEY = re.compile(r"^ssem\.(easy|hard)\.(tables|bags)\.(\d+)\.weight$")
_ENGINE_SER_KEY = re.compile(r"^ssem\.ebc\.embedding_bags\.(.+)__(easy|hard)\.weight$")


def reference_to_engine_state_dict(state: dict[str, Tensor], field_names: Sequence[str],
                                   bag_names: Sequence[str] = ()) -> dict[str, Tensor]:
    """A reference TF4CTR/SER state dict with the engine's keys (tables renamed, everything else kept).
    field_names: the single-valued fields; bag_names: the multi-valued ones (reference `bags.j`)."""
    names = {"tables": list(field_names), "bags": list(bag_names)}
    out = {}
    for key, value in state.items():
        m = _REFERENCE_SER_KEY.match(key)
        out[f"ssem.ebc.embedding_bags.{names[m[2]][int(m[3])]}__{m[1]}.weight" if m else key] = value
    return out


def engine_to_reference_state_dict(state: dict[str, Tensor], field_names: Sequence[str],
                                   bag_names: Sequence[str] = ()) -> dict[str, Tensor]:
    """The inverse of reference_to_engine_state_dict: evaluate or fine-tune an engine run with the
    reference implementation."""
    where = {name: f"tables.{i}" for i, name in enumerate(field_names)}
    where.update({name: f"bags.{j}" for j, name in enumerate(bag_names)})
    out = {}
    for key, value in state.items():
        m = _ENGINE_SER_KEY.match(key)
        out[f"ssem.{m[2]}.{where[m[1]]}.weight" if m else key] = value
    return out
