"""The layer library the models are built from (FuxiCTR semantics): field embedding on either backend,
MLP, SSEMs, and the interaction layers of the model zoo. Nothing here imports a model."""
