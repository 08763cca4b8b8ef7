"""Check train.init_order=fuxictr against the FuxiCTR package: build FuxiCTR 2.3's DNN (its model_zoo
DNN.py: FeatureEmbedding, then MLP_Block, compile, reset_parameters) over a feature map of the given
vocabularies, and this project's DNN with draw_in_fuxictr_order_, both right after seed_everything(seed);
print whether every weight and the generator state after the draws are bit-identical.

    pip install --target /tmp/fuxictr fuxictr==2.3.10 "polars<2" pandas scikit-learn h5py pyyaml --no-deps
    PYTHONPATH=/tmp/fuxictr python scripts/check_fuxictr_init.py --seeds 2023-2029

Defaults: Frappe_x1's fields and vocabularies as this project prepares them (data_prepared/frappe_x1r),
which FuxiCTR's feature map of Frappe_x1 matches (the same ids: FuxiCTR's checkpoints score identically
here, docs/results.md). Exit 1 on any difference.
"""
from __future__ import annotations

import argparse
import sys
import types
from collections import OrderedDict

import torch

FRAPPE = {"user": 942, "item": 4084, "daytime": 9, "weekday": 9, "isweekend": 4, "homework": 5, "cost": 4,
          "weather": 11, "country": 82, "city": 233}


def _stub_ray() -> None:
    # fuxictr/__init__ imports its preprocessing, which imports ray (not a dependency of the model code
    # checked here): empty stand-ins keep the import working without installing ray.
    if "ray" in sys.modules:
        return
    try:
        import ray  # noqa: F401
    except ImportError:
        data = types.ModuleType("ray.data")
        data.SaveMode = data.TaskPoolStrategy = None
        provider = types.ModuleType("ray.data.datasource.filename_provider")
        provider.FilenameProvider = object
        sys.modules.update({"ray": types.ModuleType("ray"), "ray.data": data,
                            "ray.data.datasource": types.ModuleType("ray.data.datasource"),
                            "ray.data.datasource.filename_provider": provider})


def fuxictr_dnn_state(seed: int, vocab: dict[str, int], dim: int, hidden: list[int]):
    _stub_ray()
    from fuxictr.pytorch.layers import FeatureEmbedding, MLP_Block
    from fuxictr.pytorch.models import BaseModel
    from fuxictr.pytorch.torch_utils import seed_everything

    class FeatureMap:
        dataset_id, data_dir, labels = "check", ".", ["label"]
        features = OrderedDict((name, {"type": "categorical", "vocab_size": v, "padding_idx": 0, "source": ""})
                               for name, v in vocab.items())
        num_fields = len(vocab)

    class DNN(BaseModel):   # reczoo/FuxiCTR model_zoo/DNN/src/DNN.py with the paper's settings
        def __init__(self, feature_map, **kwargs):
            super().__init__(feature_map, model_id="DNN", gpu=-1, **kwargs)
            self.embedding_layer = FeatureEmbedding(feature_map, dim)
            self.mlp = MLP_Block(input_dim=dim * feature_map.num_fields, output_dim=1, hidden_units=hidden,
                                 hidden_activations="ReLU", output_activation=self.output_activation,
                                 dropout_rates=0.2, batch_norm=True)
            self.compile("adam", "binary_crossentropy", 1e-3)
            self.reset_parameters()

    seed_everything(seed)
    model = DNN(FeatureMap(), verbose=0, model_root="/tmp", metrics=["AUC"])
    return list(model.state_dict().values()), torch.get_rng_state()


def project_dnn_state(seed: int, vocab: dict[str, int], dim: int, hidden: list[int]):
    from tf4ctr_fast.config import ModelConfig
    from tf4ctr_fast.layers.init import draw_in_fuxictr_order_
    from tf4ctr_fast.models.registry import build_model
    from tf4ctr_fast.train.trainer import seed_everything

    cfg = ModelConfig(name="DNN", embedding_dim=dim, batch_norm=True, net_dropout=0.2, emb_reg=0.1,
                      params={"dnn_hidden": hidden})
    model = build_model(cfg, list(vocab.values()), field_names=list(vocab))
    seed_everything(seed)
    draw_in_fuxictr_order_(model)
    return list(model.state_dict().values()), torch.get_rng_state()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="2023-2029", help="A-B or a comma list")
    ap.add_argument("--dim", type=int, default=16)
    args = ap.parse_args()
    a, _, b = args.seeds.partition("-")
    seeds = range(int(a), int(b) + 1) if b else [int(s) for s in args.seeds.split(",")]
    hidden = [400, 400, 400]
    bad = 0
    for seed in seeds:
        theirs, their_rng = fuxictr_dnn_state(seed, FRAPPE, args.dim, hidden)
        ours, our_rng = project_dnn_state(seed, FRAPPE, args.dim, hidden)
        same = len(theirs) == len(ours) and all(t.shape == o.shape and torch.equal(t, o) for t, o in zip(theirs, ours))
        same_rng = torch.equal(their_rng, our_rng)
        print(f"seed {seed}: {len(ours)} tensors {'bit-identical' if same else 'DIFFER'}, "
              f"generator state after the draws {'identical' if same_rng else 'DIFFERS'}")
        bad += not (same and same_rng)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
