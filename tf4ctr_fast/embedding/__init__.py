"""Field tables on TorchRec/FBGEMM: one EmbeddingBagCollection per model, fused sparse optimizer,
checked ids. See docs/embedding.md."""
from .features import check_ids, check_kjt, drop_padding, ids_to_kjt
from .fused_tables import OPTIMIZERS, FusedFieldTables, FusedTablesConfig
from .ser_tables import SERTables, SERTablesConfig

__all__ = ["OPTIMIZERS", "FusedFieldTables", "FusedTablesConfig", "SERTables", "SERTablesConfig", "check_ids",
           "check_kjt", "drop_padding", "ids_to_kjt"]
