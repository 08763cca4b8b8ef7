"""The reference backend against the torchrec backend from the same weights on Frappe_x1r's first 60
batches (the prepared folder data_prepared/frappe_x1r of `tf4ctr-fast train --config configs/frappe.yaml`),
same dropout stream: the step losses side by side. docs/embedding.md "Fused sparse optimizer" quotes it.

    .venv/bin/python scripts/clip_dynamics.py DNN adam 10      # the trainer's clip, tables included
    .venv/bin/python scripts/clip_dynamics.py DNN adam 1e9     # no clipping: both sides identical
    .venv/bin/python scripts/clip_dynamics.py DNN adam 10 --dense-only   # the engine clips dense only
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from tf4ctr_fast.config import load_config
from tf4ctr_fast.models import build_model
from tf4ctr_fast.models.state_dicts import copy_weights

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("sparse_optimizer")
parser.add_argument("clip", type=float)
parser.add_argument("--dense-only", action="store_true", help="the engine clips its dense gradients alone")
parser.add_argument("--data", default="data_prepared/frappe_x1r")
args = parser.parse_args()
torch.set_num_threads(1)

schema = json.load(open(f"{args.data}/schema.json"))
ids = torch.from_numpy(np.load(f"{args.data}/train/ids.npy").astype(np.int64))
labels = torch.from_numpy(np.load(f"{args.data}/train/labels.npy"))
vocabs = [f["vocab_size"] for f in schema["fields"]]
configs = {b: load_config("configs/frappe.yaml", [f"model.name={args.model}", f"model.backend={b}"]).model
           for b in ("reference", "torchrec")}
torch.manual_seed(0)
models = {"reference": build_model(configs["reference"], vocabs),
          "torchrec": build_model(configs["torchrec"], vocabs, sparse_optimizer=args.sparse_optimizer, sparse_lr=1e-3)}
copy_weights(models["reference"], models["torchrec"])
order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))
losses = {}
for backend, model in models.items():
    torch.manual_seed(5)                 # the same dropout masks on both sides
    dense = list(model.dense_parameters())
    adam = torch.optim.Adam(dense, lr=1e-3)
    sparse = model.sparse_optimizer()
    clip_tables = sparse is not None and hasattr(sparse, "clip_and_step") and not args.dense_only
    if clip_tables:
        sparse.deferred = True
    losses[backend] = []
    for step in range(60):
        rows = order[(step * 10000) % 200000:][:10000]
        out = model.loss(ids[rows], labels[rows])
        adam.zero_grad()
        (out["loss"] + model.regularization()).backward()
        if clip_tables:
            sparse.clip_and_step(dense, args.clip)
        else:
            torch.nn.utils.clip_grad_norm_(dense, args.clip)
        adam.step()
        losses[backend].append(out["loss"].item())
print("step  reference  torchrec")
for step in range(0, 60, 5):
    print(f"{step:4d}  {losses['reference'][step]:.4f}     {losses['torchrec'][step]:.4f}")
