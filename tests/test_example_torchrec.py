"""examples/torchrec_user_model.py: a user's TorchRec model made of tf4ctr_fast's SER tables and the
TF4CTR head trains (loss goes down, the fused tables move, only on rows the batches looked up)."""
import importlib.util
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore", module="torchrec")
warnings.filterwarnings("ignore", module="fbgemm_gpu")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "torchrec_user_model.py"


def _example():
    spec = importlib.util.spec_from_file_location("torchrec_user_model", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_user_model_trains():
    ex = _example()
    model = ex.build(seed=0)
    start = {k: w.detach().clone() for k, w in model.tables.table_weights().items()}
    losses = ex.train(model, steps=40, batch=256)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-10:]) < sum(losses[:10])

    # Replay the batches: exactly the looked-up rows of every table moved.
    gen = torch.Generator().manual_seed(1)
    looked_up = {name: set() for name in ex.FIELDS}
    for _ in range(40):
        features, _ = ex.synthetic_batch(256, gen)
        for name, jagged in features.to_dict().items():
            looked_up[name] |= set(jagged.values().tolist()) - {0}
    for table, weight in model.tables.table_weights().items():
        moved = set((weight != start[table]).any(1).nonzero().view(-1).tolist())
        assert moved == looked_up[table.split("__")[0]], table


def test_user_model_outputs():
    ex = _example()
    model = ex.build(seed=0)
    features, y = ex.synthetic_batch(32, torch.Generator().manual_seed(3))
    out = model(features, y)
    assert out["logit"].shape == out["z_s"].shape == out["z_c"].shape == (32,)
    assert out["loss"].dim() == 0
