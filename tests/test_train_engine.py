"""The trainer with model.backend "torchrec" in one process: the planted problem end to end, checkpoints
(weights and the fused optimizer's state), the plateau decay reaching the fused kernels, the split
between Adam (dense parameters) and the fused tables, and the config checks of the new keys."""
import logging
import warnings

import numpy as np
import pytest
import torch

warnings.filterwarnings("ignore", module="torchrec")
warnings.filterwarnings("ignore", module="fbgemm_gpu")

from test_trainer import VOCAB, make_cfg, planted_data  # noqa: E402

from tf4ctr_fast.config import ModelConfig  # noqa: E402
from tf4ctr_fast.errors import InputError  # noqa: E402
from tf4ctr_fast.models.tf4ctr import TF4CTR  # noqa: E402
from tf4ctr_fast.train import checkpoint, trainer  # noqa: E402
from tf4ctr_fast.train.checkpoint import load_checkpoint, read_checkpoint, restore_weights  # noqa: E402
from tf4ctr_fast.train.runlog import read_log  # noqa: E402
from tf4ctr_fast.train.trainer import predict_proba, train  # noqa: E402


def engine_cfg(out_dir, **train_keys):
    cfg = make_cfg(out_dir, **{"lr": 0.01, "sparse_optimizer": "rowwise_adagrad", "sparse_lr": 0.1, **train_keys})
    cfg.model = ModelConfig(backend="torchrec", embedding_dim=8, mlp_s_hidden=[16], mlp_c_hidden=[16, 16],
                            net_dropout=0.0, emb_reg=1e-3)
    return cfg


@pytest.fixture
def built(monkeypatch):
    """Records the model train() builds and the parameters it hands to Adam."""
    seen = {"models": [], "adam_params": []}
    build, adam = checkpoint._build_model, torch.optim.Adam

    def build_and_keep(*args, **kwargs):
        seen["models"].append(build(*args, **kwargs))
        return seen["models"][-1]

    def adam_and_keep(params, *args, **kwargs):
        params = list(params)
        seen["adam_params"].append(params)
        return adam(params, *args, **kwargs)

    monkeypatch.setattr(trainer, "_build_model", build_and_keep)
    monkeypatch.setattr(torch.optim, "Adam", adam_and_keep)
    return seen


def test_planted_problem_end_to_end_and_checkpoint(tmp_path, built):
    data, _ = planted_data()
    result = train(engine_cfg(tmp_path), data)
    assert result["valid"]["auc"] > 0.7 and result["test"]["auc"] > 0.7     # the oracle is ~0.8

    [model] = built["models"]
    assert isinstance(model, TF4CTR) and model.sparse_optimizer() is not None
    [adam_params] = built["adam_params"]
    tables = {id(w) for w in model.ssem.weights()}
    assert {id(p) for p in adam_params} == {id(p) for p in model.dense_parameters()}
    assert tables and not tables & {id(p) for p in adam_params}

    # The checkpoint loads for inference (plain tables, no optimizer) with identical predictions.
    loaded, _, _ = load_checkpoint(result["checkpoint"])
    assert loaded.sparse_optimizer() is None
    valid = data.split("valid")
    assert np.array_equal(predict_proba(loaded, valid, 128), predict_proba(model, valid, 128))

    # It carries the row-wise Adagrad accumulators: non-zero exactly on the rows training looked up
    # (planted ids start at 2: padding 0 and OOV 1 never occur), and they load back into a fused model.
    saved = read_checkpoint(result["checkpoint"])["sparse_optimizer_state"]["state"]
    for field, vocab in zip(data.field_names, VOCAB):
        for kind in ("easy", "hard"):
            key = f"{field}__{kind}.weight"
            momentum = saved[key][f"{key}.momentum_1"]
            assert momentum.shape == (vocab,)
            assert torch.all(momentum[:2] == 0) and torch.all(momentum[2:] > 0), key
    fresh = checkpoint._build_model(engine_cfg(tmp_path), data.field_names, data.vocab_sizes)
    restore_weights(result["checkpoint"], fresh)
    restored = fresh.sparse_optimizer().state_dict()["state"]
    for key, state in saved.items():
        assert torch.equal(restored[key][f"{key}.momentum_1"], state[f"{key}.momentum_1"]), key


def test_plateau_decay_reaches_the_fused_kernels(tmp_path, built, monkeypatch):
    monkeypatch.setattr(trainer, "monitor_value", lambda metrics, monitor: 0.5)   # never improves again
    data, _ = planted_data(rows=(512, 200, 100))
    train(engine_cfg(tmp_path, epochs=10, patience=2, lr_decay=0.1, min_lr=2e-3), data)
    epochs = [r for r in read_log(tmp_path / "log.jsonl") if r["event"] == "epoch"]
    assert [r["improved"] for r in epochs] == [True, False, False]
    # dense 0.01 and sparse 0.1 decay together, both floored at min_lr
    assert [r["lr"] for r in epochs] + [epochs[-1]["lr_next"]] == pytest.approx([0.01, 0.01, 2e-3, 2e-3])
    assert ([r["sparse_lr"] for r in epochs] + [epochs[-1]["sparse_lr_next"]]
            == pytest.approx([0.1, 0.1, 0.01, 2e-3]))
    [model] = built["models"]
    # what FBGEMM's kernels will use, not only the optimizer's bookkeeping
    kernels = [lookup._emb_module for lookup in model.ssem.ebc._emb_modules]
    assert kernels and all(k.get_learning_rate() == pytest.approx(2e-3) for k in kernels)


@pytest.mark.parametrize("device, nproc, keys, want", [
    ("cpu", 1, {}, ("adam", 0.01)),                                   # the one at parity: lr = train.lr
    ("cpu", 2, {}, ("rowwise_adagrad", 0.01)),                        # ours runs in one process only
    ("cuda", 1, {}, ("rowwise_adagrad", 0.01)),
    ("cpu", 1, {"sparse_lr": 0.05}, ("adam", 0.05)),
    ("cpu", 2, {"sparse_lr": 0.05}, ("rowwise_adagrad", 0.05)),
    ("cpu", 1, {"sparse_optimizer": "lazy_adam"}, ("lazy_adam", 0.01)),
    ("cpu", 1, {"sparse_optimizer": "sgd"}, ("sgd", 0.01)),
    ("cpu", 1, {"sparse_optimizer": "rowwise_adagrad", "sparse_lr": 0.2}, ("rowwise_adagrad", 0.2)),
], ids=str)
def test_auto_sparse_optimizer_and_lr_resolve_per_device(tmp_path, device, nproc, keys, want):
    cfg = make_cfg(tmp_path, **{"lr": 0.01, "sparse_optimizer": "auto", "sparse_lr": None, "nproc": nproc, **keys})
    cfg.model = ModelConfig(backend="torchrec")
    got = trainer.resolve_sparse_optimizer(cfg, torch.device(device))
    assert (got.train.sparse_optimizer, got.train.sparse_lr) == pytest.approx(want)
    cfg.model = ModelConfig(backend="reference")            # no sparse optimizer: left as configured
    assert trainer.resolve_sparse_optimizer(cfg, torch.device(device)) is cfg


@pytest.mark.parametrize("name, device, nproc, keys, want", [
    ("TF4CTR", "cpu", 1, {}, "torchrec"),                     # at parity with sparse adam (docs/results.md)
    ("DNN", "cpu", 1, {"sparse_optimizer": "adam"}, "torchrec"),
    ("TF4CTR-DeepFM", "cpu", 1, {}, "torchrec"),
    ("TF4CTR", "cpu", 1, {"sparse_optimizer": "rowwise_adagrad"}, "reference"),   # not at parity
    ("TF4CTR", "cuda", 1, {}, "reference"),                   # no sparse adam there
    ("AFN", "cpu", 1, {}, "torchrec"),
    ("xDeepFM", "cpu", 1, {}, "reference"),                   # not shown at parity
    ("DLF", "cpu", 1, {}, "reference"),
    ("TF4CTR-DLF", "cpu", 1, {}, "reference"),
    ("DNN", "cpu", 1, {"init_order": "fuxictr"}, "reference"),   # checked on the reference only
    ("xDeepFM", "cpu", 2, {}, "torchrec"),                    # several processes: only torchrec runs
    ("TF4CTR", "cuda", 2, {}, "torchrec"),
], ids=str)
def test_auto_backend_resolves_per_model_device_and_optimizer(tmp_path, name, device, nproc, keys, want):
    cfg = make_cfg(tmp_path, **{"sparse_optimizer": "auto", "nproc": nproc, **keys})
    cfg.model = ModelConfig(name=name)
    assert cfg.model.backend == "auto"                        # the default
    got = trainer.resolve_backend(cfg, torch.device(device))
    assert got.model.backend == want and got.model.name == name
    for concrete in ("reference", "torchrec"):                # a backend named is left alone
        cfg.model = ModelConfig(name=name, backend=concrete)
        assert trainer.resolve_backend(cfg, torch.device(device)) is cfg


def test_auto_backend_without_torchrec_is_the_reference(monkeypatch):
    import importlib.util

    from tf4ctr_fast.layers import embedding

    assert embedding.auto_backend("TF4CTR", "cpu", "auto") == "torchrec"
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchrec" else find_spec(name, *a))
    assert embedding.auto_backend("TF4CTR", "cpu", "auto") == "reference"


def test_build_model_resolves_auto_against_its_sparse_optimizer():
    from tf4ctr_fast.layers.embedding import DenseFieldTables
    from tf4ctr_fast.models import build_model

    cfg = ModelConfig(name="DNN", embedding_dim=8, dnn_hidden=[8])
    assert isinstance(build_model(cfg, [5, 6]).embedding, DenseFieldTables)   # default rowwise_adagrad
    engine = build_model(cfg, [5, 6], sparse_optimizer="adam", sparse_lr=1e-3)
    assert type(engine.sparse_optimizer()).__name__ == "RowSparseAdam"
    xdeepfm = build_model(ModelConfig(name="xDeepFM", embedding_dim=8), [5, 6], sparse_optimizer="adam",
                          sparse_lr=1e-3)
    assert xdeepfm.sparse_optimizer() is None                                 # not at parity: reference


def test_default_backend_is_logged_checkpointed_and_named_resolved(tmp_path, built, caplog):
    data, _ = planted_data(rows=(256, 100, 50))
    cfg = make_cfg(tmp_path, epochs=1)
    cfg.model = ModelConfig(embedding_dim=8, mlp_s_hidden=[16], mlp_c_hidden=[16, 16])    # TF4CTR, backend auto
    with caplog.at_level(logging.INFO, logger="tf4ctr_fast"):
        train(cfg, data)
    assert "tables: torchrec backend, sparse optimizer adam, sparse_lr " in caplog.text   # the console says so
    [params] = [r for r in read_log(tmp_path / "log.jsonl") if r["event"] == "params"]
    assert params["config"]["model"]["backend"] == "torchrec"
    assert params["config"]["train"]["sparse_optimizer"] == "adam"
    [model] = built["models"]
    assert type(model.sparse_optimizer()).__name__ == "RowSparseAdam"
    _, saved, _ = load_checkpoint(tmp_path / "best.pt", "cpu")
    assert saved.model.backend == "torchrec"
    cfg.train.out_dir = ""                                    # the default run folder names the backend taken
    name = trainer.resolve_backend(cfg, torch.device("cpu")).resolved_out_dir().name
    assert "_torchrec_" in name and "auto" not in name


def test_default_sparse_optimizer_is_logged_and_checkpointed_resolved(tmp_path, built):
    data, _ = planted_data(rows=(256, 100, 50))
    train(engine_cfg(tmp_path, epochs=1, sparse_optimizer="auto", sparse_lr=None), data)
    [params] = [r for r in read_log(tmp_path / "log.jsonl") if r["event"] == "params"]
    assert (params["config"]["train"]["sparse_optimizer"], params["config"]["train"]["sparse_lr"]) == ("adam", 0.01)
    [model] = built["models"]
    assert type(model.sparse_optimizer()).__name__ == "RowSparseAdam"
    _, cfg, _ = load_checkpoint(tmp_path / "best.pt", "cpu")
    assert (cfg.train.sparse_optimizer, cfg.train.sparse_lr) == ("adam", 0.01)


def test_reference_backend_has_no_sparse_lr(tmp_path, caplog):
    data, _ = planted_data(rows=(256, 100, 50))
    cfg = engine_cfg(tmp_path, epochs=1)
    cfg.model.backend = "reference"
    with caplog.at_level(logging.INFO, logger="tf4ctr_fast"):
        train(cfg, data)
    assert "tables: reference backend (dense Adam over whole tables" in caplog.text
    [epoch] = [r for r in read_log(tmp_path / "log.jsonl") if r["event"] == "epoch"]
    assert epoch["sparse_lr"] is None and epoch["lr"] == pytest.approx(0.01)
    assert "sparse_optimizer_state" not in read_checkpoint(tmp_path / "best.pt")


@pytest.mark.parametrize("changes, key", [
    ({"model.backend": "jax"}, "model.backend"),
    ({"train.sparse_optimizer": "adagrad"}, "train.sparse_optimizer"),
    ({"train.sparse_optimizer": "adam", "train.nproc": 2}, "train.sparse_optimizer"),  # ours: one process
    ({"train.sparse_optimizer": "lazy_adam", "train.nproc": 2}, "train.sparse_optimizer"),
    ({"train.sparse_lr": 0.0}, "train.sparse_lr"),
    ({"train.sharding": "diagonal"}, "train.sharding"),
    ({"train.sharding": "row_wise", "train.nproc": 2}, "train.sharding"),
    ({"train.nproc": 0}, "train.nproc"),
    ({"train.nproc": 2, "model.backend": "reference"}, "train.nproc"),
], ids=lambda v: str(v))
def test_bad_engine_config_names_the_key(tmp_path, changes, key):
    data, _ = planted_data(rows=(64, 32, 16))
    cfg = engine_cfg(tmp_path)                  # train.device "cpu"
    for dotted, value in changes.items():
        section, name = dotted.split(".")
        setattr(getattr(cfg, section), name, value)
    with pytest.raises(InputError, match=f"'{key}'"):
        train(cfg, data)
    assert not (tmp_path / "log.jsonl").exists()     # stopped before anything started


def test_sparse_adam_trains_resumes_and_matches_an_uninterrupted_run(tmp_path, built, monkeypatch):
    """train.sparse_optimizer adam through the trainer: it learns the planted problem, its checkpoint
    predicts like the trained model, and a run that crashed mid-epoch resumes to the results of the
    uninterrupted run (the optimizer's state: moments, per-row steps, clipping factors)."""
    from tf4ctr_fast.embedding.sparse_adam import RowSparseAdam

    data, _ = planted_data(rows=(512, 200, 100))
    adam = {"sparse_optimizer": "adam", "sparse_lr": 0.01, "batch_size": 128, "epochs": 3}
    whole = train(engine_cfg(tmp_path / "whole", **adam), data)
    assert whole["valid"]["auc"] > 0.7
    model = built["models"][0]
    assert isinstance(model.sparse_optimizer(), RowSparseAdam) and model.sparse_optimizer().deferred
    loaded, _, _ = load_checkpoint(whole["checkpoint"])
    valid = data.split("valid")
    np.testing.assert_allclose(predict_proba(loaded, valid, 128), predict_proba(model, valid, 128), rtol=1e-6)

    step = RowSparseAdam.clip_and_step
    calls = []

    def fails_at_the_seventh(self, *args, **kwargs):       # 4 steps an epoch: in epoch 2
        calls.append(1)
        if len(calls) == 7:
            raise RuntimeError("boom")
        return step(self, *args, **kwargs)

    monkeypatch.setattr(RowSparseAdam, "clip_and_step", fails_at_the_seventh)
    cfg = engine_cfg(tmp_path / "run", checkpoint_every_steps=1, **adam)
    with pytest.raises(RuntimeError, match="boom"):
        train(cfg, data)
    monkeypatch.setattr(RowSparseAdam, "clip_and_step", step)
    resumed = train(cfg, data, resume=True)
    for split in ("valid", "test"):
        for key, value in whole[split].items():
            assert resumed[split][key] == pytest.approx(value, rel=1e-5), (split, key)
