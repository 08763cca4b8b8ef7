"""SER dual tables on TorchRec/FBGEMM: one EmbeddingBagCollection, fused sparse optimizer, checked ids.
See docs/embedding.md."""
from .features import check_ids, check_kjt, drop_padding, ids_to_kjt
from .ser_tables import OPTIMIZERS, SERTables, SERTablesConfig

__all__ = ["OPTIMIZERS", "SERTables", "SERTablesConfig", "check_ids", "check_kjt", "drop_padding", "ids_to_kjt"]
