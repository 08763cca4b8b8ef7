"""How far apart the two backends end after 16 steps from the same weights, against how far the
reference backend moves from itself when its tables are nudged by a relative 1e-7: is a model's
backend gap the optimizer's, or rounding that the model's own dynamics amplify?

    python scripts/backend_divergence.py DLF --emb-reg 0.1 --clip 0.05 --threads 1

Same set-up as tests/test_sparse_adam.py (its batches and trainer-like steps, an lr change midway).
Prints the largest logit difference on 400 held-out rows for: reference vs reference nudged, engine
vs engine nudged, reference vs engine. When the first two are as large as the third, the backends'
runs of that model are independent draws and only their final figures over seeds compare."""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_sparse_adam import _backend_configs, _batches, _train_steps  # noqa: E402

from tf4ctr_fast.layers.embedding import FieldTables  # noqa: E402
from tf4ctr_fast.models import build_model  # noqa: E402
from tf4ctr_fast.models.state_dicts import copy_weights  # noqa: E402


def start_model(cfg: dict, vocabs: list[int], backend: str, nudge: float, seed: int, lr: float) -> torch.nn.Module:
    """cfg["reference"]'s model drawn from `seed`, every table scaled by 1 + nudge, on `backend` (the
    torchrec one with sparse adam at `lr`, from the same weights)."""
    torch.manual_seed(seed)
    start = build_model(cfg["reference"], vocabs)
    with torch.no_grad():
        for tables in (m for m in start.modules() if isinstance(m, FieldTables)):
            for weight in tables.field_weights().values():
                weight.mul_(1 + nudge)
    if backend == "reference":
        return start
    engine = build_model(cfg["torchrec"], vocabs, sparse_optimizer="adam", sparse_lr=lr)
    copy_weights(start, engine)
    return engine


def final_logits(cfg, vocabs, backend: str, nudge: float, clip, batches, x) -> torch.Tensor:
    model = start_model(cfg, vocabs, backend, nudge, seed=0, lr=1e-3)
    _train_steps(model, torch.optim.Adam(model.dense_parameters(), lr=1e-3), batches, 8, 3e-4, clip)
    model.eval()
    return model(x)["logit"].detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--emb-reg", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=None, help="global-norm threshold (default: no clipping)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*", help="more model keys, e.g. model.params.num_layers=2")
    args = ap.parse_intermixed_args()
    torch.set_num_threads(args.threads)
    vocabs = [40, 300, 6]
    cfg = _backend_configs([f"model.name={args.model}", f"model.emb_reg={args.emb_reg}", "model.embedding_dim=8",
                            "model.net_dropout=0", "model.batch_norm=false", *args.overrides])
    batches = _batches(vocabs, 16)
    x = _batches(vocabs, 1, batch=400, seed=4)[0][0]
    out = {(backend, nudge): final_logits(cfg, vocabs, backend, nudge, args.clip, batches, x)
           for backend in ("reference", "torchrec") for nudge in (0.0, 1e-7)}
    gap = lambda a, b: (out[a] - out[b]).abs().max().item()   # noqa: E731
    print(f"{args.model} emb_reg {args.emb_reg} clip {args.clip} threads {args.threads}: "
          f"reference vs nudged {gap(('reference', 0.0), ('reference', 1e-7)):.2e}, "
          f"engine vs nudged {gap(('torchrec', 0.0), ('torchrec', 1e-7)):.2e}, "
          f"reference vs engine {gap(('reference', 0.0), ('torchrec', 0.0)):.2e}")


if __name__ == "__main__":
    main()
