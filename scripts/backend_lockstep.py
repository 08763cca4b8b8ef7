"""Both backends on a real dataset from the same weights, the same batches and the same dropout masks,
trainer-like steps (global-norm clip over dense and table gradients), epoch by epoch; after each
epoch, the valid logits of the reference, of the reference started from tables nudged by a relative
1e-7, and of the torchrec backend (sparse adam), and how far apart they are.

    python scripts/backend_lockstep.py --config configs/frappe.yaml --epochs 3 model.name=xDeepFM

When "reference vs engine" stays below "reference vs nudged", the engine trains the reference's
training up to rounding, and what the model's dynamics make of rounding is all that parts them (the
lr stays at train.lr: no plateau rule, no early stop). 1 thread; an epoch of Frappe takes about a
minute per model."""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from backend_divergence import start_model  # noqa: E402  (scripts/, this file's folder)
from test_sparse_adam import _train_steps  # noqa: E402

from tf4ctr_fast.config import load_config  # noqa: E402
from tf4ctr_fast.data.columns import load_prepared  # noqa: E402
from tf4ctr_fast.data.prepare import ensure_prepared  # noqa: E402
from tf4ctr_fast.train.metrics import auc  # noqa: E402

RUNS = (("reference", 0.0), ("reference", 1e-7), ("torchrec", 0.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args()
    torch.set_num_threads(1)
    cfgs = {b: load_config(args.config, [*args.overrides, f"model.backend={b}"]) for b in ("reference", "torchrec")}
    models_cfg = {b: c.model for b, c in cfgs.items()}
    tc = cfgs["reference"].train
    data = load_prepared(ensure_prepared(cfgs["reference"].dataset))
    train, valid = data.split("train"), data.split("valid")
    x_valid = torch.from_numpy(valid.ids.astype(np.int64))

    models = {run: start_model(models_cfg, data.vocab_sizes, *run, seed=tc.seed, lr=tc.lr) for run in RUNS}
    optimizers = {run: torch.optim.Adam(m.dense_parameters(), lr=tc.lr) for run, m in models.items()}
    for epoch in range(1, args.epochs + 1):
        order = np.random.default_rng(tc.seed + epoch).permutation(train.num_rows)
        batches = [(torch.from_numpy(train.ids[rows].astype(np.int64)), torch.from_numpy(train.labels[rows]))
                   for rows in np.array_split(order, range(tc.batch_size, train.num_rows, tc.batch_size))]
        logits = {}
        for run, model in models.items():
            start = time.time()
            model.train()
            torch.manual_seed(tc.seed + 1000 * epoch)       # the same dropout masks for every run
            _train_steps(model, optimizers[run], batches, clip=tc.clip_norm)
            model.eval()
            with torch.no_grad():
                logits[run] = torch.cat([model(x)["logit"] for x in x_valid.split(tc.eval_batch_size)])
            print(f"  {run[0]}{' nudged' if run[1] else ''}, epoch {epoch}: valid AUC "
                  f"{auc(valid.labels, torch.sigmoid(logits[run]).numpy()):.5f} ({time.time() - start:.0f} s)",
                  flush=True)
        reference, nudged, engine = (logits[run] for run in RUNS)
        print(f"epoch {epoch}: largest valid logit difference, reference vs nudged "
              f"{(reference - nudged).abs().max():.2e}, reference vs engine {(reference - engine).abs().max():.2e}",
              flush=True)


if __name__ == "__main__":
    main()
