"""Trainer end to end on a tiny planted problem with a tiny model that follows the model contract."""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from tf4ctr_fast.config import RunConfig
from tf4ctr_fast.errors import InputError
from tf4ctr_fast.train import checkpoint, trainer
from tf4ctr_fast.train.checkpoint import load_checkpoint, read_checkpoint
from tf4ctr_fast.train.metrics import auc
from tf4ctr_fast.train.runlog import read_log
from tf4ctr_fast.train.trainer import Plateau, evaluate, predict_proba, train

VOCAB = [12, 9]     # field "user" (also the gAUC group) and field "item"


# ---------------------------------------------------------------- tiny model and data

class TinyLogistic(nn.Module):
    """logit = w_user[id] + w_item[id] + b: the model contract with the least machinery."""

    def __init__(self, vocab_sizes, emb_reg=0.0):
        super().__init__()
        self.weights = nn.ModuleList(nn.Embedding(v, 1) for v in vocab_sizes)
        for w in self.weights:
            nn.init.zeros_(w.weight)
        self.bias = nn.Parameter(torch.zeros(()))
        self.emb_reg = emb_reg

    def forward(self, ids):
        logit = self.bias + sum(w(ids[:, j]).squeeze(-1) for j, w in enumerate(self.weights))
        return {"logit": logit}

    def loss(self, ids, y):
        logit = self(ids)["logit"]
        return {"loss": F.binary_cross_entropy_with_logits(logit, y), "logit": logit}

    def regularization(self):
        return self.emb_reg / 2 * sum(w.weight.pow(2).sum() for w in self.weights)


class ConstantModel(TinyLogistic):
    """Predicts the same score for every row, so valid AUC is exactly 0.5 in every epoch."""

    def forward(self, ids):
        return {"logit": self.bias.expand(ids.shape[0])}


@dataclass
class Split:
    ids: np.ndarray
    labels: np.ndarray
    group: Optional[np.ndarray]
    keep: Optional[np.ndarray] = None

    @property
    def num_rows(self):
        return len(self.labels)


class Dataset:
    def __init__(self, splits, group_field="user"):
        self.splits = splits
        self.field_names = ["user", "item"]
        self.vocab_sizes = list(VOCAB)
        self.group_field = group_field
        self.schema = {"format_version": 1, "group_field": group_field, "label": "label",
                       "fields": [{"name": n, "kind": "categorical", "vocab_size": v}
                                  for n, v in zip(self.field_names, VOCAB)],
                       "splits": {k: s.num_rows for k, s in splits.items()}}

    def has_split(self, name):
        return name in self.splits

    def split(self, name):
        return self.splits[name]


def planted_data(seed=0, rows=(3000, 1000, 1000)):
    """Clicks drawn from a true logistic model over the two fields; returns (data, true p of valid)."""
    rng = np.random.default_rng(seed)
    user_effect = rng.normal(0, 1.5, VOCAB[0])
    item_effect = rng.normal(0, 1.5, VOCAB[1])
    splits, valid_p = {}, None
    for name, n in zip(("train", "valid", "test"), rows):
        ids = np.stack([rng.integers(2, VOCAB[0], n), rng.integers(2, VOCAB[1], n)], 1).astype(np.int32)
        p = 1 / (1 + np.exp(-(user_effect[ids[:, 0]] + item_effect[ids[:, 1]] - 0.5)))
        labels = (rng.random(n) < p).astype(np.float32)
        splits[name] = Split(ids, labels, group=ids[:, 0].astype(np.int64) * 100)
        if name == "valid":
            valid_p = p
    return Dataset(splits), valid_p


def make_cfg(out_dir, **train):
    cfg = RunConfig()
    cfg.model.backend = "reference"          # the reference trainer's tests (test_train_engine.py: torchrec)
    cfg.train.batch_size = 256
    cfg.train.eval_batch_size = 300          # does not divide the split: partial last batch
    cfg.train.epochs = 6
    cfg.train.lr = 0.05
    cfg.train.device = "cpu"
    cfg.train.progress = False
    cfg.train.out_dir = str(out_dir)
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def temp_files(folder: Path):
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]


# ---------------------------------------------------------------- tests

def test_planted_problem_end_to_end(tmp_path):
    data, valid_p = planted_data()
    cfg = make_cfg(tmp_path / "run", monitor="auc+gauc")
    model = TinyLogistic(VOCAB, emb_reg=1e-4)
    result = train(cfg, data, model=model)

    oracle = auc(data.split("valid").labels, valid_p)       # AUC of the true click probabilities
    assert oracle > 0.75
    assert result["valid"]["auc"] > oracle - 0.02
    assert result["test"]["auc"] > 0.7
    assert 0.5 < result["valid"]["gauc"] <= 1.0

    out = Path(result["out_dir"])
    records = read_log(out / "log.jsonl")
    assert records[0]["event"] == "params"
    assert records[0]["config"] == json.loads(json.dumps(cfg.to_dict()))
    assert records[0]["schema_summary"]["rows"] == {"train": 3000, "valid": 1000, "test": 1000}
    assert {"torch", "numpy", "python", "platform", "device", "num_threads"} <= set(records[0]["env"])
    epochs = [r for r in records if r["event"] == "epoch"]
    assert records[-1]["event"] == "result" and len(records) == 2 + len(epochs)
    assert len(epochs) == result["epochs"]
    for r in epochs:
        assert r["monitor"] == pytest.approx(r["valid"]["auc"] + r["valid"]["gauc"])
        assert sum(r["difficulty"].values()) == 1000
        assert r["train_samples"] == 3000 and r["steps"] == 12      # ceil(3000 / 256)
    # the reloaded best checkpoint reproduces the best epoch's valid metrics exactly
    best = epochs[result["best_epoch"] - 1]
    assert best["improved"] and result["valid"] == best["valid"]
    assert json.loads((out / "results.json").read_text()) == result
    for png in ("learning_curves.png", "difficulty.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert temp_files(out) == []


def test_predict_proba_matches_hand_computation(tmp_path):
    data, _ = planted_data(rows=(600, 301, 10))
    model = TinyLogistic(VOCAB)
    train(make_cfg(tmp_path, epochs=1), data, model=model)
    ids = data.split("valid").ids
    w_user = model.weights[0].weight.detach().numpy()[:, 0].astype(np.float64)
    w_item = model.weights[1].weight.detach().numpy()[:, 0].astype(np.float64)
    by_hand = 1 / (1 + np.exp(-(w_user[ids[:, 0]] + w_item[ids[:, 1]] + model.bias.item())))
    np.testing.assert_allclose(predict_proba(model, ids, 64, "cpu"), by_hand, rtol=1e-5)
    np.testing.assert_allclose(predict_proba(model, data.split("valid"), 1000, "cpu"), by_hand, rtol=1e-5)
    metrics = evaluate(model, data.split("valid"), 64, "cpu", with_group=True)
    assert metrics["n"] == 301 and set(metrics) == {"auc", "gauc", "logloss", "n"}
    assert metrics["auc"] == pytest.approx(auc(data.split("valid").labels, by_hand), abs=1e-9)


def test_steps_match_hand_rolled_adam_with_regularizer_and_clipping(tmp_path):
    """Full-batch epochs (row order then cannot matter): the trainer's weights after 3 steps equal
    a plain loop of (BCE + reg) -> backward -> clip_grad_norm_ -> Adam, and the logged train loss
    of the first step equals the hand value of BCE + (λ/2)·Σ‖W‖² at the initial weights."""
    data, _ = planted_data(rows=(400, 100, 10))
    train_split = data.split("train")
    model = TinyLogistic(VOCAB, emb_reg=0.5)
    with torch.no_grad():
        for j, w in enumerate(model.weights):
            w.weight.copy_(torch.linspace(-1, 1, VOCAB[j])[:, None])
    init = {k: v.clone() for k, v in model.state_dict().items()}
    ref = TinyLogistic(VOCAB, emb_reg=0.5)
    ref.load_state_dict(init)

    cfg = make_cfg(tmp_path, epochs=3, batch_size=400, lr=0.3, clip_norm=0.05, lr_decay=1.0, patience=100)
    train(cfg, data, model=model)

    ids, y = torch.from_numpy(train_split.ids).long(), torch.from_numpy(train_split.labels)
    w_user, w_item = (w.numpy()[:, 0].astype(np.float64) for w in (init["weights.0.weight"],
                                                                      init["weights.1.weight"]))
    p0 = 1 / (1 + np.exp(-(w_user[train_split.ids[:, 0]] + w_item[train_split.ids[:, 1]])))
    bce0 = -np.mean(train_split.labels * np.log(p0) + (1 - train_split.labels) * np.log(1 - p0))
    reg0 = 0.5 / 2 * (np.sum(w_user ** 2) + np.sum(w_item ** 2))
    first = [r for r in read_log(tmp_path / "log.jsonl") if r["event"] == "epoch"][0]
    assert first["train_loss"] == pytest.approx(bce0 + reg0, rel=1e-5)

    opt = torch.optim.Adam(ref.parameters(), lr=0.3)
    for _ in range(3):
        opt.zero_grad()
        (ref.loss(ids, y)["loss"] + ref.regularization()).backward()
        torch.nn.utils.clip_grad_norm_(list(ref.parameters()), 0.05)
        opt.step()
    for (name, got), want in zip(model.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=name)


def test_lr_decay_floor_and_early_stop_when_auc_cannot_improve(tmp_path):
    data, _ = planted_data(rows=(512, 200, 100))
    cfg = make_cfg(tmp_path, epochs=20, lr=1e-3, lr_decay=0.1, min_lr=5e-5, patience=3)
    result = train(cfg, data, model=ConstantModel(VOCAB))
    epochs = [r for r in read_log(tmp_path / "log.jsonl") if r["event"] == "epoch"]
    assert result["epochs"] == len(epochs) == 1 + 3
    assert [r["valid"]["auc"] for r in epochs] == [0.5] * 4
    assert [r["improved"] for r in epochs] == [True, False, False, False]
    lrs = [r["lr"] for r in epochs] + [epochs[-1]["lr_next"]]
    # decayed after each non-improving epoch (2, 3, 4), never below min_lr: 1e-4 * 0.1 -> 5e-5
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-4, 5e-5, 5e-5])
    assert result["best_epoch"] == 1


def test_lr_sequence_constant_model_patience_two(tmp_path):
    data, _ = planted_data(rows=(512, 200, 100))
    cfg = make_cfg(tmp_path, epochs=20, lr=1e-2, lr_decay=0.1, min_lr=1e-6, patience=2)
    result = train(cfg, data, model=ConstantModel(VOCAB))
    epochs = [r for r in read_log(tmp_path / "log.jsonl") if r["event"] == "epoch"]
    assert result["epochs"] == 1 + 2
    assert [r["lr"] for r in epochs] == pytest.approx([1e-2, 1e-2, 1e-3])
    assert epochs[-1]["lr_next"] == pytest.approx(1e-4)


def test_lr_decay_patience_cuts_after_that_many_bad_epochs_in_a_row(tmp_path):
    data, _ = planted_data(rows=(512, 200, 100))
    cfg = make_cfg(tmp_path, epochs=20, lr=1e-2, lr_decay=0.1, min_lr=1e-6, patience=5, lr_decay_patience=2)
    result = train(cfg, data, model=ConstantModel(VOCAB))
    epochs = [r for r in read_log(tmp_path / "log.jsonl") if r["event"] == "epoch"]
    assert result["epochs"] == 1 + 5
    # bad epochs 2..6: the cut comes after the 2nd and the 4th of them
    assert [r["lr"] for r in epochs] == pytest.approx([1e-2, 1e-2, 1e-2, 1e-3, 1e-3, 1e-4])
    assert epochs[-1]["lr_next"] == pytest.approx(1e-4)


def test_plateau_resets_on_improvement_and_needs_min_delta():
    plateau = Plateau(patience=2)
    steps = [(0.60, True), (0.60, False), (0.6000005, False), (0.70, True), (0.70 + 2e-6, True),
             (0.65, False), (0.70, False)]
    for value, improved in steps:
        assert plateau.update(value) == improved
    assert plateau.should_stop and plateau.best == pytest.approx(0.70 + 2e-6)
    assert not Plateau(patience=2).update(float("nan"))


def test_best_checkpoint_reloads_with_identical_predictions(tmp_path, monkeypatch):
    data, _ = planted_data(rows=(800, 300, 50))
    cfg = make_cfg(tmp_path, epochs=3)
    model = TinyLogistic(VOCAB)
    result = train(cfg, data, model=model)
    monkeypatch.setattr(checkpoint, "_build_model",
                        lambda cfg, field_names, vocab_sizes, device=None, **_: TinyLogistic(vocab_sizes))
    loaded, loaded_cfg, schema = load_checkpoint(result["checkpoint"])
    assert loaded_cfg == cfg and schema == data.schema
    valid = data.split("valid")
    assert np.array_equal(predict_proba(loaded, valid, 128, "cpu"), predict_proba(model, valid, 128, "cpu"))
    assert read_checkpoint(result["checkpoint"])["epoch"] == result["best_epoch"]


def test_missing_or_corrupt_checkpoint_names_the_path(tmp_path):
    with pytest.raises(InputError, match="nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(InputError, match="bad.pt"):
        load_checkpoint(bad)


class FailsInEpochTwo(TinyLogistic):
    def __init__(self, vocab_sizes, fail_at_call):
        super().__init__(vocab_sizes)
        self.calls, self.fail_at_call = 0, fail_at_call

    def loss(self, ids, y):
        self.calls += 1
        if self.calls == self.fail_at_call:
            raise RuntimeError("boom")
        return super().loss(ids, y)


def test_exception_mid_run_leaves_only_complete_artifacts(tmp_path):
    data, _ = planted_data(rows=(512, 200, 100))
    cfg = make_cfg(tmp_path, batch_size=128)                      # 4 steps per epoch
    for stale in ("results.json", "best.pt", "difficulty.png"):      # left by an earlier run here
        (tmp_path / stale).write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        train(cfg, data, model=FailsInEpochTwo(VOCAB, fail_at_call=4 + 2), overwrite=True)
    assert temp_files(tmp_path) == []
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "difficulty.png").exists()
    assert [r["event"] for r in read_log(tmp_path / "log.jsonl")] == ["params", "epoch"]
    assert read_checkpoint(tmp_path / "best.pt")["epoch"] == 1    # epoch 1's checkpoint is complete


def _write_half_then_interrupt(path, *args, **kwargs):
    Path(path).write_bytes(b"half a file")
    raise KeyboardInterrupt


def test_ctrl_c_during_checkpoint_write_leaves_no_checkpoint(tmp_path, monkeypatch):
    data, _ = planted_data(rows=(256, 100, 50))
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: _write_half_then_interrupt(f))
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(tmp_path), data, model=TinyLogistic(VOCAB))
    assert not (tmp_path / "best.pt").exists()
    assert temp_files(tmp_path) == []


def test_ctrl_c_during_plot_write_leaves_no_png(tmp_path, monkeypatch):
    data, _ = planted_data(rows=(256, 100, 50))
    monkeypatch.setattr(Figure, "savefig", lambda self, f, *a, **k: _write_half_then_interrupt(f))
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(tmp_path), data, model=TinyLogistic(VOCAB))
    assert list(tmp_path.glob("*.png")) == []
    assert temp_files(tmp_path) == []


def random_init_logistic(cfg, field_names, vocab_sizes, device=None, **_):
    model = TinyLogistic(vocab_sizes)
    for w in model.weights:
        nn.init.normal_(w.weight)
    return model


def test_same_seed_same_run(tmp_path, monkeypatch):
    # the model is built inside train() from a random init, so the seed decides it and the batch order
    monkeypatch.setattr(trainer, "_build_model", random_init_logistic)
    data, _ = planted_data(rows=(600, 200, 50))
    a = train(make_cfg(tmp_path / "a", epochs=2, lr=0.01), data)
    torch.manual_seed(123)   # the trainer must reseed, whatever the global state
    b = train(make_cfg(tmp_path / "b", epochs=2, lr=0.01), data)
    c = train(make_cfg(tmp_path / "c", epochs=2, lr=0.01, seed=7), data)
    assert a["valid"] == b["valid"]
    assert a["valid"] != c["valid"]


@pytest.mark.parametrize("key,value,message", [
    ("monitor", "AUC", "train.monitor"),
    ("device", "tpu", "train.device"),
    ("difficulty_thresholds", [0.6, 0.3], "train.difficulty_thresholds"),
    ("checkpoint_every_steps", -1, "train.checkpoint_every_steps"),
    ("divergence_factor", 0.5, "train.divergence_factor"),
])
def test_bad_train_config_raises_input_error_naming_key(tmp_path, key, value, message):
    data, _ = planted_data(rows=(64, 32, 16))
    with pytest.raises(InputError, match=message):
        train(make_cfg(tmp_path, **{key: value}), data, model=TinyLogistic(VOCAB))


def test_auc_plus_gauc_needs_group_field(tmp_path):
    data, _ = planted_data(rows=(64, 32, 16))
    data.group_field = None
    with pytest.raises(InputError, match="group"):
        train(make_cfg(tmp_path, monitor="auc+gauc"), data, model=TinyLogistic(VOCAB))


def test_results_report_what_the_resumable_checkpoints_cost(tmp_path):
    data, _ = planted_data(rows=(1024, 200, 100))
    result = train(make_cfg(tmp_path, epochs=2, patience=5), data, model=TinyLogistic(VOCAB))
    # the default interval: one last.pt per epoch end (a minute of work never passes here)
    assert result["last_checkpoint_writes"] == 2
    assert 0 < result["last_checkpoint_write_s"] and 0 < result["last_checkpoint_share_of_train_time"] < 100
    none = train(make_cfg(tmp_path / "none", epochs=2, patience=5, checkpoint_every_steps=0), data,
                 model=TinyLogistic(VOCAB))
    assert none["last_checkpoint_writes"] == 0 and not (tmp_path / "none" / "last.pt").exists()


def test_oversubscription_warning():
    from tf4ctr_fast.train.trainer import oversubscription

    assert oversubscription(threads=1, load=5.0, cores=2) is None          # one thread never waits
    assert oversubscription(threads=2, load=0.3, cores=2) is None          # an idle box
    message = oversubscription(threads=2, load=1.2, cores=2)
    assert message is not None and "train.num_threads=1" in message


def test_shuffle_seed_changes_the_batch_order_only(tmp_path):
    """train.shuffle_seed null == train.seed; another value draws another order of the same batches'
    rows from the same initial weights (so the first epoch's loss differs, its sample count not)."""
    data, _ = planted_data(rows=(1024, 200, 100))

    def first_epoch(name, **keys):
        torch.manual_seed(0)
        train(make_cfg(tmp_path / name, epochs=1, **keys), data, model=TinyLogistic(VOCAB))
        return [r for r in read_log(tmp_path / name / "log.jsonl") if r["event"] == "epoch"][0]

    default, same, other = first_epoch("a"), first_epoch("b", shuffle_seed=2023), first_epoch("c", shuffle_seed=7)
    assert default["train_loss"] == same["train_loss"]
    assert other["train_loss"] != default["train_loss"] and other["train_samples"] == default["train_samples"]
