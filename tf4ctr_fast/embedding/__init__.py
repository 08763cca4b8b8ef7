"""Field tables on TorchRec/FBGEMM: one EmbeddingBagCollection per model, fused sparse optimizer,
checked ids. See docs/embedding.md."""
import logging

from .features import check_ids, check_kjt, drop_padding, ids_to_kjt
from .fused_tables import OPTIMIZERS, FusedFieldTables, FusedTablesConfig
from .ser_tables import SERTables, SERTablesConfig

__all__ = ["OPTIMIZERS", "FusedFieldTables", "FusedTablesConfig", "SERTables", "SERTablesConfig", "check_ids",
           "check_kjt", "drop_padding", "ids_to_kjt"]


class _NotFxTracingNotice(logging.Filter):
    """torch.fx logs "is_fx_tracing will return true for both fx.symbolic_trace and torch.export..."
    the first time TorchRec asks it, i.e. in every torchrec run: a note for torch's own developers,
    nothing our users can act on. Only that message is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("is_fx_tracing will return true")


logging.getLogger("torch.fx._symbolic_trace").addFilter(_NotFxTracingNotice())
