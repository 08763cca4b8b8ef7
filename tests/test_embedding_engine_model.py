"""The engine's TF4CTR (TorchRec SER tables) against the reference TF4CTR: same forward from the same
weights, same parameters after SGD steps with the batch regularizer, state-dict round trips."""
import dataclasses
import warnings

import pytest
import torch

warnings.filterwarnings("ignore", module="torchrec")
warnings.filterwarnings("ignore", module="fbgemm_gpu")

from tf4ctr_fast.config import ModelConfig  # noqa: E402
from tf4ctr_fast.errors import InputError  # noqa: E402
from tf4ctr_fast.models import build_model, engine_to_reference_state_dict, reference_to_engine_state_dict  # noqa: E402

NAMES = ["u", "i", "c", "t"]
VOCAB = [40, 25, 9, 3]


def _cfg(**kw) -> ModelConfig:
    base = dict(embedding_dim=8, mlp_s_hidden=[16], mlp_c_hidden=[32, 16], batch_norm=True, net_dropout=0.0,
                emb_reg=0.2, dfm="WSF")
    base.update(kw)
    return ModelConfig(**base)


def _pair(cfg: ModelConfig, sparse_lr: float = 0.1):
    torch.manual_seed(0)
    ref = build_model(cfg, VOCAB)
    eng = build_model(dataclasses.replace(cfg, backend="torchrec"), VOCAB, field_names=NAMES, sparse_optimizer="sgd",
                      sparse_lr=sparse_lr)
    eng.load_state_dict(reference_to_engine_state_dict(ref.state_dict(), NAMES))
    return ref, eng


def _batch(gen: torch.Generator, size: int = 48):
    ids = torch.stack([torch.randint(0, v, (size,), generator=gen) for v in VOCAB], dim=1)
    return ids, torch.randint(0, 2, (size,), generator=gen).float()


def _batch_rows_l2(ref, ids, emb_reg):
    """The engine's regularizer written on the reference tables: distinct looked-up rows, once each."""
    total = 0
    for f in range(len(VOCAB)):
        rows = ids[:, f].unique()
        total = total + ref.ssem.easy.tables[f].weight[rows].pow(2).sum()
        total = total + ref.ssem.hard.tables[f].weight[rows].pow(2).sum()
    return emb_reg / 2 * total


@pytest.mark.parametrize("dfm", ["WSF", "CF", "MoEF", "sum"])
def test_forward_matches_reference(dfm):
    ref, eng = _pair(_cfg(dfm=dfm))
    ids, y = _batch(torch.Generator().manual_seed(1))
    for mode in ("train", "eval"):
        ref.train(mode == "train"), eng.train(mode == "train")
        out_r, out_e = ref(ids), eng(ids)
        for key in ("logit", "z_s", "z_c"):
            torch.testing.assert_close(out_e[key], out_r[key], rtol=1e-6, atol=1e-7, msg=f"{mode} {key}")
    torch.testing.assert_close(eng.loss(ids, y)["loss"], ref.loss(ids, y)["loss"], rtol=1e-6, atol=0)


def test_sgd_steps_match_reference():
    """Reference: plain torch SGD on every parameter, loss + batch-rows regularizer (rows not looked up
    get no gradient, so SGD leaves them alone). Engine: torch SGD on dense_parameters(), fused SGD on
    the tables. Different dense and sparse lrs check that each side goes to its own optimizer."""
    cfg = _cfg()
    dense_lr, sparse_lr = 0.05, 0.3
    ref, eng = _pair(cfg, sparse_lr=sparse_lr)
    tables_r = set(map(id, ref.ssem.parameters()))
    opt_r = torch.optim.SGD([{"params": [p for p in ref.parameters() if id(p) not in tables_r], "lr": dense_lr},
                             {"params": list(ref.ssem.parameters()), "lr": sparse_lr}])
    opt_e = torch.optim.SGD(eng.dense_parameters(), lr=dense_lr)
    gen = torch.Generator().manual_seed(2)
    losses = []
    for _ in range(4):
        ids, y = _batch(gen)
        opt_r.zero_grad()
        loss_r = ref.loss(ids, y)["loss"] + _batch_rows_l2(ref, ids, cfg.emb_reg)
        loss_r.backward()
        opt_r.step()
        opt_e.zero_grad()
        loss_e = eng.loss(ids, y)["loss"] + eng.regularization()
        loss_e.backward()
        opt_e.step()
        torch.testing.assert_close(loss_e, loss_r, rtol=1e-6, atol=0)
        losses.append(loss_e.item())
    assert losses[0] != losses[-1]
    got = engine_to_reference_state_dict(eng.state_dict(), NAMES)
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-7, msg=key)


def test_dense_parameters_exclude_fused_tables():
    _, eng = _pair(_cfg())
    dense = set(map(id, eng.dense_parameters()))
    tables = set(map(id, eng.ssem.parameters()))
    assert tables and not dense & tables
    assert dense | tables == set(map(id, eng.parameters()))
    assert eng.sparse_optimizer() is not None


def test_state_dict_round_trip():
    ref, eng = _pair(_cfg())
    back = engine_to_reference_state_dict(eng.state_dict(), NAMES)
    assert back.keys() == ref.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in ref.state_dict().items())


def test_reference_backend_has_engine_contract():
    model = build_model(_cfg(), VOCAB)
    assert len(model.dense_parameters()) == len(list(model.parameters()))
    assert model.sparse_optimizer() is None


def test_backend_errors():
    with pytest.raises(InputError, match="'model.backend'"):
        build_model(_cfg(backend="jax"), VOCAB)
    eng = build_model(_cfg(backend="torchrec"), VOCAB)
    with pytest.raises(InputError, match="field 'f1': id 25 "):
        eng(torch.tensor([[1, 25, 1, 1]]))
