"""Every registered model, one suite: output shapes (ids and multi-valued fields), determinism, backend
parity (same weights -> same logits, loss and gradients on the reference and the torchrec backend),
learning a planted signal, checkpoint round trip, predict. A new model gets all of it by registering.

Sizes are tiny: every hidden-width list of a model's parameters is shrunk to [8] (`tiny_config`)."""
import dataclasses
import warnings

import numpy as np
import pytest
import torch

warnings.filterwarnings("ignore", message=".*is_fx_tracing.*")

from tf4ctr_fast.config import ModelConfig, RunConfig  # noqa: E402
from tf4ctr_fast.errors import InputError  # noqa: E402
from tf4ctr_fast.features import BagField, Features  # noqa: E402
from tf4ctr_fast.models import build_model, copy_weights, model_class, model_names  # noqa: E402
from tf4ctr_fast.train.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from tf4ctr_fast.train.trainer import predict_proba  # noqa: E402

NAMES = ["user", "item", "ctx"]
VOCAB = [30, 20, 9]
BAGS = [BagField("tags", 12, "mean")]
DIM = 8
B = 16
MODELS = model_names()
PAPER_BASELINES = {"LR", "FM", "WideDeep", "DeepFM", "DCN", "DCNv2", "xDeepFM", "AutoInt", "AFN", "EDCN",
                   "EulerNet", "FinalMLP", "DNN", "DualMLP", "TF4CTR"}


def tiny_config(name: str, **shared) -> ModelConfig:
    """The model with every hidden-width list shrunk to [8] (empty lists stay empty: they switch a part
    off), no dropout anywhere, head "reference" (the fused head's own tests cover it)."""
    params = {}
    for f in dataclasses.fields(model_class(name).Params):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if isinstance(default, list) and default and all(isinstance(v, int) for v in default):
            params[f.name] = [8] * min(len(default), 2)
        elif "dropout" in f.name:
            params[f.name] = 0.0
    base = dict(name=name, embedding_dim=DIM, net_dropout=0.0, batch_norm=True, emb_reg=0.0, head="reference",
                params=params)
    base.update(shared)
    return ModelConfig(**base)


def build(name: str, backend: str = "reference", bags=(), fused: bool = True, **shared):
    return build_model(tiny_config(name, backend=backend, **shared), VOCAB, bags, field_names=NAMES,
                       sparse_optimizer="sgd", sparse_lr=1.0, fused=fused)


def batch(seed: int = 0, with_bags: bool = False, n: int = B):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, v, (n,), generator=gen) for v in VOCAB], dim=1)   # 0: padding
    y = torch.randint(0, 2, (n,), generator=gen).float()
    if not with_bags:
        return ids, y
    lengths = torch.randint(0, 4, (n,), generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    values = torch.randint(0, BAGS[0].vocab_size, (int(offsets[-1]),), generator=gen)
    return Features(ids, {"tags": (values, offsets)}), y


def test_registry_holds_the_papers_baselines():
    assert PAPER_BASELINES <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("with_bags", [False, True], ids=["ids", "bags"])
def test_output_shapes_and_every_parameter_trains(name, with_bags):
    torch.manual_seed(0)
    model = build(name, bags=BAGS if with_bags else (), emb_reg=0.01)
    x, y = batch(with_bags=with_bags)
    out = model(x, y)
    assert out["logit"].shape == (B,) and out["loss"].shape == ()
    assert torch.isfinite(out["logit"]).all() and torch.isfinite(out["loss"])
    (out["loss"] + model.regularization()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert model.loss(x, y).keys() == {"loss", "logit"}


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_model_and_eval_is_deterministic(name):
    x, _ = batch()
    logits = []
    for _ in range(2):
        torch.manual_seed(3)
        model = build(name).eval()
        with torch.no_grad():
            first, second = model(x)["logit"], model(x)["logit"]
        assert torch.equal(first, second)
        logits.append(first)
    assert torch.equal(logits[0], logits[1])


def _network_grads(model):
    """Gradients of every parameter but the field tables'."""
    tables = {id(w) for t in model.field_tables() for w in t.parameters()}
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None and id(p) not in tables}


def assert_backends_agree(cfg: ModelConfig) -> None:
    """The model of cfg on both backends with the same weights: same logits and loss, same dense
    gradients, and the fused SGD step (lr 1) moves each looked-up row by exactly the reference's row
    gradient (tests/test_dlf.py reuses it for DLF's attention variants)."""
    torch.manual_seed(0)
    ref = build_model(dataclasses.replace(cfg, backend="reference"), VOCAB, BAGS, field_names=NAMES)
    eng = build_model(dataclasses.replace(cfg, backend="torchrec"), VOCAB, BAGS, field_names=NAMES,
                      sparse_optimizer="sgd", sparse_lr=1.0)
    copy_weights(ref, eng)
    # Eval mode: BatchNorm uses the same running statistics and nothing draws noise on either side.
    ref.eval(), eng.eval()
    x, y = batch(1, with_bags=True)
    before = {k: w.detach().clone() for t in eng.field_tables() for k, w in t.field_weights().items()}
    outs = []
    for model in (ref, eng):
        out = model(x, y)
        out["loss"].backward()
        outs.append(out)
    torch.testing.assert_close(outs[1]["logit"], outs[0]["logit"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(outs[1]["loss"], outs[0]["loss"], rtol=1e-6, atol=1e-7)
    g_ref, g_eng = _network_grads(ref), _network_grads(eng)
    assert g_ref.keys() == g_eng.keys() and g_ref
    for n in g_ref:
        torch.testing.assert_close(g_eng[n], g_ref[n], rtol=1e-6, atol=1e-8, msg=n)
    after = {k: w for t in eng.field_tables() for k, w in t.field_weights().items()}
    for t in ref.field_tables():
        for key, weight in t.field_weights().items():
            grad = weight.grad if weight.grad is not None else torch.zeros_like(weight)
            torch.testing.assert_close(before[key] - after[key], grad, rtol=1e-5, atol=1e-8, msg=str(key))


@pytest.mark.parametrize("name", MODELS)
def test_backend_parity_logits_loss_and_gradients(name):
    assert_backends_agree(tiny_config(name))


@pytest.mark.parametrize("name", MODELS)
def test_learns_a_planted_signal(name):
    """Click iff the user id is odd: a few Adam steps on one batch must cut the loss."""
    torch.manual_seed(0)
    model = build(name)
    x, _ = batch(2, n=64)
    y = (x[:, 0] % 2).float()
    opt = torch.optim.Adam(model.dense_parameters(), lr=0.02)
    first = None
    for _ in range(40):
        opt.zero_grad()
        loss = model.loss(x, y)["loss"]
        first = first if first is not None else loss.item()
        (loss + model.regularization()).backward()
        opt.step()
    assert model.loss(x, y)["loss"].item() < 0.7 * first


def assert_checkpoint_round_trip(model_cfg: ModelConfig, tmp_path) -> None:
    """Save the model of model_cfg, load it back: same config, same logits, predict in odd batches."""
    torch.manual_seed(0)
    cfg = RunConfig(model=model_cfg)
    cfg.train.sparse_optimizer = "sgd"
    model = build_model(cfg.model, VOCAB, field_names=NAMES, sparse_optimizer="sgd").eval()
    schema = {"fields": [{"name": n, "vocab_size": v} for n, v in zip(NAMES, VOCAB)]}
    save_checkpoint(tmp_path / "best.pt", model, cfg, schema, epoch=1, metrics={})
    loaded, loaded_cfg, _ = load_checkpoint(tmp_path / "best.pt")
    assert loaded_cfg.model == cfg.model
    x, _ = batch(4, n=20)
    with torch.no_grad():
        want = torch.sigmoid(model(x)["logit"]).numpy()
        torch.testing.assert_close(loaded(x)["logit"], model(x)["logit"], rtol=0, atol=0)
    got = predict_proba(loaded, x.numpy(), batch_size=7)     # batches of 7, 7, 6: row-independent
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("backend", ["reference", "torchrec"])
def test_checkpoint_round_trip_and_predict(name, backend, tmp_path):
    assert_checkpoint_round_trip(tiny_config(name, backend=backend), tmp_path)


# The table keys of checkpoints written before the model zoo (read off that code: every key and shape of
# these models was identical then and now); the number is the state dict's size.
PRE_ZOO_TABLE_KEYS = {
    ("DNN", "reference", None): (12, ["embedding.bags.0.weight", "embedding.tables.0.weight",
                                      "embedding.tables.1.weight"]),
    ("DualMLP", "reference", None): (21, ["ssem.embedding.bags.0.weight", "ssem.embedding.tables.0.weight",
                                          "ssem.embedding.tables.1.weight"]),
    ("TF4CTR", "reference", "GM"): (32, ["ssem.embedding.bags.0.weight", "ssem.embedding.tables.0.weight",
                                         "ssem.embedding.tables.1.weight"]),
    ("TF4CTR", "reference", "SER"): (26, [f"ssem.{kind}.{table}.weight" for kind in ("easy", "hard")
                                          for table in ("bags.0", "tables.0", "tables.1")]),
    ("TF4CTR", "torchrec", "SER"): (26, [f"ssem.ebc.embedding_bags.{field}__{kind}.weight" for field in "abg"
                                         for kind in ("easy", "hard")]),
}


@pytest.mark.parametrize("name,backend,ssem", list(PRE_ZOO_TABLE_KEYS))
def test_pre_zoo_checkpoints_keep_their_state_dict_keys(name, backend, ssem):
    legacy = dict(mlp_s_hidden=[4], mlp_c_hidden=[4], dnn_hidden=[4]) | ({"ssem": ssem} if ssem else {})
    cfg = ModelConfig(name=name, embedding_dim=8, backend=backend, **legacy)
    state = build_model(cfg, [5, 6], [BagField("g", 4)], field_names=["a", "b"], sparse_optimizer="sgd").state_dict()
    size, table_keys = PRE_ZOO_TABLE_KEYS[(name, backend, ssem)]
    assert len(state) == size
    assert sorted(k for k in state if ".tables." in k or ".bags." in k or ".ebc." in k) == sorted(table_keys)


@pytest.mark.parametrize("name", MODELS)
def test_unknown_param_is_named(name):
    with pytest.raises(InputError, match=r"'model\.params\.no_such_key' is unknown"):
        build_model(ModelConfig(name=name, params={"no_such_key": 1}), VOCAB)


# ---- sharding: two CPU ranks (gloo), every model in one launch (process start-up dominates the cost)

WORLD = 2
SHARDED_STEPS = 2
DENSE_LR, SPARSE_LR = 0.05, 0.3


def _sharding_config(name: str) -> ModelConfig:
    # No BatchNorm: per-rank batch statistics would differ from one process's by design.
    return tiny_config(name, backend="torchrec", batch_norm=False, emb_reg=0.1)


def _sharding_model(name: str, sharded: bool):
    return build_model(_sharding_config(name), VOCAB, BAGS, field_names=NAMES, sparse_optimizer="sgd",
                       sparse_lr=SPARSE_LR, fused=not sharded)


def _sharding_batches():
    for step in range(SHARDED_STEPS):
        yield batch(10 + step, with_bags=True, n=2 * 8)


def _ranks_main(out_path: str) -> None:
    import logging

    from data_parallel import train_sharded
    from tf4ctr_fast.distributed import init_distributed, shard_model, unsharded_state_dict

    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    rank, world, _ = init_distributed()
    results = {}
    for name in MODELS:
        torch.manual_seed(0)
        model = _sharding_model(name, sharded=True)
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        dmp = shard_model(model, "table_wise")
        losses = train_sharded(dmp, _sharding_batches(), rank, world, DENSE_LR)
        trained = unsharded_state_dict(dmp)      # a collective: every rank calls it
        if rank == 0:
            results[name] = {"start": start, "losses": losses, "trained": trained}
    if rank == 0:
        torch.save(results, out_path)


@pytest.fixture(scope="module")
def sharded_results(tmp_path_factory):
    from data_parallel import run_on_ranks

    return run_on_ranks(WORLD, _ranks_main, tmp_path_factory.mktemp("zoo_dist"))


@pytest.mark.parametrize("name", MODELS)
def test_sharded_training_matches_single_process(sharded_results, name):
    """table_wise over 2 ranks, multi-valued field included, against one process running the
    data-parallel objective (the mean over the rank batches of loss + batch regularizer)."""
    from data_parallel import train_single_process_twin

    got = sharded_results[name]
    model = _sharding_model(name, sharded=False)
    model.load_state_dict(got["start"])
    losses = train_single_process_twin(model, _sharding_batches(), WORLD, DENSE_LR)
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(losses), rtol=1e-5, atol=0)
    expected = model.state_dict()
    assert got["trained"].keys() == expected.keys()      # gathered into the unsharded layout
    # BatchNorm running statistics (AFN's layers always have some) differ by design: DDP keeps rank
    # 0's, the twin saw both halves in turn. Every parameter must match.
    buffers = {key for key, _ in model.named_buffers()}
    for key, value in expected.items():
        if key not in buffers:
            torch.testing.assert_close(got["trained"][key], value, rtol=1e-5, atol=1e-7, msg=lambda m: key + m)


@pytest.mark.parametrize("name,backend", [("DeepFM", "torchrec"), ("AutoInt", "reference")])
def test_trainer_runs_a_zoo_model_end_to_end(name, backend, tmp_path):
    """The trainer knows no model: a baseline trains on the planted two-field problem of test_trainer
    and its best checkpoint reloads."""
    from test_trainer import make_cfg, planted_data

    from tf4ctr_fast.train.trainer import train

    data, _ = planted_data(rows=(1500, 500, 500))
    cfg = make_cfg(tmp_path / "run", lr=0.01, sparse_lr=0.1, epochs=3)
    cfg.model = tiny_config(name, backend=backend, emb_reg=1e-4)
    result = train(cfg, data)
    assert result["valid"]["auc"] > 0.7
    loaded, loaded_cfg, _ = load_checkpoint(tmp_path / "run" / "best.pt")
    assert type(loaded).name == name and loaded_cfg.model.params == cfg.model.params


def test_docs_list_every_model_rule():
    from pathlib import Path

    from tf4ctr_fast.models.registry import model_rules_table

    docs = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert model_rules_table() in docs.read_text()


@pytest.mark.parametrize("name", MODELS)
def test_every_numeric_parameter_has_a_rule(name):
    import typing

    cls = model_class(name).Params
    checked = []
    cls().check(lambda ok, key, what: checked.append(key))
    hints = typing.get_type_hints(cls)
    numeric = [f.name for f in dataclasses.fields(cls)
               if hints[f.name] in (int, float) or str(hints[f.name]) in ("list[int]", "list[float]")]
    assert set(numeric) <= set(checked), f"{name}: no rule for {sorted(set(numeric) - set(checked))}"
