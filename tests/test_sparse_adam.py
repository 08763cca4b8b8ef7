"""Row-sparse Adam of the CPU tables (kernels/sparse_adam.cpp, reference/sparse_adam.py,
embedding/sparse_adam.py): the kernel against its op-by-op twin, the twin against torch.optim.Adam
over whole tables with the whole-table L2 (what sparse optimizer "adam" promises), and the tables'
optimizer in a model against the reference backend."""
from __future__ import annotations

import pytest
import torch

from tf4ctr_fast.ops import HAS_KERNELS
from tf4ctr_fast.ops.sparse_adam import sparse_adam_catch_up, sparse_adam_grad_norm_sq, sparse_adam_step

LR, BETA1, BETA2, EPS = 1e-3, 0.9, 0.999, 1e-8
STEPS = 20


def _layout(dims, vocabs):
    """FBGEMM's flat layout of tables with row widths `dims` and row counts `vocabs`."""
    weights_offsets = torch.tensor([0] + [d * v for d, v in zip(dims, vocabs)][:-1]).cumsum(0)
    d_offsets = torch.tensor([0] + list(dims)).cumsum(0).to(torch.int32)
    hash_size_cumsum = torch.tensor([0] + list(vocabs)).cumsum(0)
    return weights_offsets, d_offsets, hash_size_cumsum


def _batch(gen, vocabs, dims, batch, max_bag, dtype):
    """Random bags (table-major) with repeated rows, and a gradient for their pooled output."""
    lengths = torch.randint(0, max_bag + 1, (len(vocabs) * batch,), generator=gen)
    ids = [torch.randint(0, vocabs[i // batch], (int(n),), generator=gen) for i, n in enumerate(lengths)]
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).to(dtype)
    grad = torch.randn(batch, sum(dims), generator=gen)
    return torch.cat(ids).to(dtype), offsets, grad


def _with_l2_rows(ids, offsets, grad, weights, layout, decay):
    """The batch plus one single-row bag per distinct looked-up row, with gradient decay * row: the
    gradient of (decay/2)*||row||^2, which the models' regularizer feeds the lookup the same way
    (FusedFieldTables: append_unique_rows)."""
    weights_offsets, d_offsets, _ = layout
    batch, tables = grad.shape[0], len(weights_offsets)
    distinct = []
    for t in range(tables):
        dim = int(d_offsets[t + 1] - d_offsets[t])
        table = weights[int(weights_offsets[t]):].narrow(0, 0, 0)  # placeholder, replaced below
        rows = ids[int(offsets[t * batch]):int(offsets[(t + 1) * batch])].long().unique()
        table = weights[int(weights_offsets[t]):int(weights_offsets[t]) + dim * (int(rows.max()) + 1 if len(rows) else 0)]
        distinct.append((t, rows, table.view(-1, dim) if len(rows) else None))
    extra = sum(len(rows) for _, rows, _ in distinct)
    new_grad = torch.cat([grad, grad.new_zeros(extra, grad.shape[1])])
    new_ids, lengths, row = [], [], batch
    for t, rows, table in distinct:
        d0, d1 = int(d_offsets[t]), int(d_offsets[t + 1])
        bags = offsets[t * batch:(t + 1) * batch + 1]
        new_ids.append(ids[int(bags[0]):int(bags[-1])])
        lengths.append(bags.diff())
        table_lengths = torch.zeros(extra, dtype=torch.long)
        for r in rows:
            table_lengths[row - batch] = 1
            new_grad[row, d0:d1] = decay * table[r]
            row += 1
        new_ids.append(rows.to(ids.dtype))
        lengths.append(table_lengths)
    new_offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cat(lengths).long().cumsum(0)])
    return torch.cat(new_ids), new_offsets.to(offsets.dtype), new_grad


def _state(dims, vocabs, gen):
    n = sum(d * v for d, v in zip(dims, vocabs))
    return [torch.randn(n, generator=gen) * 0.01, torch.zeros(n), torch.zeros(n),
            torch.zeros(sum(vocabs), dtype=torch.long)]


@pytest.mark.skipif(not HAS_KERNELS, reason="compiled kernels not built")
@pytest.mark.parametrize("replay", [True, False])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("dims,vocabs", [((8,), (40,)), ((8, 8, 4, 16), (30, 7, 50, 3))])
def test_kernel_matches_reference(replay, index_dtype, dims, vocabs):
    gen = torch.Generator().manual_seed(0)
    layout = _layout(dims, vocabs)
    kernel, ref = _state(dims, vocabs, gen), None
    ref = [t.clone() for t in kernel]
    decay = 0.1
    scales = 0.5 + torch.rand(12, generator=gen)   # the clipping factor of each step
    for step in range(1, 8):
        ids, offsets, grad = _batch(gen, vocabs, dims, batch=5, max_bag=3, dtype=index_dtype)
        args = (*layout, ids, offsets, grad, scales, step, LR, BETA1, BETA2, EPS, decay, replay)
        sparse_adam_step(*kernel, *args)
        sparse_adam_step(*ref, *args, reference_path=True)
    for got, want in zip(kernel, ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)
    if replay:
        ids, offsets, _ = _batch(gen, vocabs, dims, batch=5, max_bag=3, dtype=index_dtype)
        sparse_adam_catch_up(*kernel, *layout, ids, offsets, scales, 8, LR, BETA1, BETA2, EPS, decay)
        sparse_adam_catch_up(*ref, *layout, ids, offsets, scales, 8, LR, BETA1, BETA2, EPS, decay,
                             reference_path=True)
        for got, want in zip(kernel, ref):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)
        sparse_adam_catch_up(*kernel, *layout, None, None, scales, 9, LR, BETA1, BETA2, EPS, decay)
        sparse_adam_catch_up(*ref, *layout, None, None, scales, 9, LR, BETA1, BETA2, EPS, decay,
                             reference_path=True)
        assert int(kernel[3].min()) == 9
        for got, want in zip(kernel, ref):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("path", ["kernel", "reference"])
@pytest.mark.parametrize("decay", [0.0, 0.1])
def test_replayed_adam_is_dense_adam_with_whole_table_l2(path, decay):
    """After a catch-up, the tables equal torch.optim.Adam over whole tables on grad + decay * W."""
    if path == "kernel" and not HAS_KERNELS:
        pytest.skip("compiled kernels not built")
    gen = torch.Generator().manual_seed(1)
    dims, vocabs = (8, 4), (60, 9)
    layout = _layout(dims, vocabs)
    state = _state(dims, vocabs, gen)
    tables = [state[0][int(o):int(o) + d * v].clone().view(v, d).requires_grad_()
              for o, d, v in zip(layout[0], dims, vocabs)]
    dense = torch.optim.Adam(tables, lr=LR, betas=(BETA1, BETA2), eps=EPS)
    for step in range(1, STEPS + 1):
        ids, offsets, grad = _batch(gen, vocabs, dims, batch=4, max_bag=2, dtype=torch.int64)
        # What the tables' lookup does: its rows catch up before it reads them (and their L2 term).
        sparse_adam_catch_up(*state, *layout, ids, offsets, None, step - 1, LR, BETA1, BETA2, EPS, decay,
                             reference_path=path == "reference")
        sparse_adam_step(*state, *layout, *_with_l2_rows(ids, offsets, grad, state[0], layout, decay), None, step,
                         LR, BETA1, BETA2, EPS, decay, True,
                         reference_path=path == "reference")
        dense.zero_grad()
        for t, table in enumerate(tables):
            bags = offsets[t * 4:(t + 1) * 4 + 1]
            pooled = torch.nn.functional.embedding_bag(ids[int(bags[0]):int(bags[-1])], table,
                                                       bags[:-1] - bags[0], mode="sum")
            d0, d1 = int(layout[1][t]), int(layout[1][t + 1])
            ((pooled * grad[:, d0:d1]).sum() + decay / 2 * table.pow(2).sum()).backward()
        dense.step()
    sparse_adam_catch_up(*state, *layout, None, None, None, STEPS, LR, BETA1, BETA2, EPS, decay, reference_path=path == "reference")
    flat = torch.cat([t.detach().flatten() for t in tables])
    torch.testing.assert_close(state[0], flat, rtol=1e-5, atol=1e-8)


@pytest.mark.skipif(not HAS_KERNELS, reason="compiled kernels not built")
def test_grad_norm_matches_reference():
    gen = torch.Generator().manual_seed(2)
    dims, vocabs = (8, 4, 16), (20, 5, 9)
    layout = _layout(dims, vocabs)
    ids, offsets, grad = _batch(gen, vocabs, dims, batch=6, max_bag=3, dtype=torch.int64)
    got = sparse_adam_grad_norm_sq(*layout, ids, offsets, grad)
    want = sparse_adam_grad_norm_sq(*layout, ids, offsets, grad, reference_path=True)
    assert got == pytest.approx(want, rel=1e-6) and want > 0


def _train_steps(model, optimizer, batches, lr_change_at=None, new_lr=None, clip=None):
    """Trainer-like steps; clip: the global-norm clipping of train/trainer.py (tables included where the
    sparse optimizer can, as the reference's covers its dense tables)."""
    sparse = model.sparse_optimizer()
    if clip is not None and sparse is not None:
        sparse.deferred = True
    for i, (x, y) in enumerate(batches):
        if i == lr_change_at:
            for group in optimizer.param_groups + (sparse.param_groups if sparse is not None else []):
                group["lr"] = new_lr
            if sparse is not None:
                sparse.step()        # the trainer's lr change (train/trainer.py _set_sparse_lrs)
        loss = model.loss(x, y)["loss"] + model.regularization()
        optimizer.zero_grad()
        loss.backward()
        if clip is not None and sparse is not None:
            sparse.clip_and_step(list(model.dense_parameters()), clip)
        elif clip is not None:
            torch.nn.utils.clip_grad_norm_(list(model.dense_parameters()), clip)
        optimizer.step()


def _batches(vocabs, count, batch=48, seed=3):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.stack([torch.randint(1, v, (batch,), generator=gen) for v in vocabs], 1),
             (torch.rand(batch, generator=gen) < 0.4).float()) for _ in range(count)]


def _backend_configs(keys: list[str]) -> dict:
    """The model config of `keys` on each backend (reference, torchrec)."""
    from tf4ctr_fast.config import load_config

    return {backend: load_config(None, keys + [f"model.backend={backend}"]).model
            for backend in ("reference", "torchrec")}


@pytest.mark.parametrize("clip", [None, 0.05], ids=["unclipped", "clipped"])
@pytest.mark.parametrize("name", ["DNN", "TF4CTR", "DeepFM", "xDeepFM"])
def test_torchrec_adam_trains_like_the_reference_backend(name, clip):
    """Same start, same batches, an lr change midway: the torchrec backend with sparse optimizer "adam"
    ends where the reference backend's dense Adam with the whole-table L2 ends (rows of the 300-row
    field are missed by most batches); "lazy_adam" does not. Clipped: the global norm over the dense and
    the table gradients, with a threshold that binds at every step. No BatchNorm: the Linear bias before it has
    a zero gradient up to rounding, which Adam scales to whole +-lr steps, so the backends' different
    summation orders would show there as noise of one step."""
    from tf4ctr_fast.models import build_model
    from tf4ctr_fast.models.state_dicts import copy_weights

    vocabs = [40, 300, 6]
    cfg = _backend_configs([f"model.name={name}", "model.emb_reg=0.1", "model.embedding_dim=8",
                            "model.net_dropout=0", "model.batch_norm=false"])
    batches = _batches(vocabs, 16)
    torch.manual_seed(0)
    reference = build_model(cfg["reference"], vocabs)
    _train_steps(reference, torch.optim.Adam(reference.dense_parameters(), lr=1e-3), batches, 8, 3e-4, clip)
    reference.eval()
    x = _batches(vocabs, 1, batch=400, seed=4)[0][0]
    want = reference(x)["logit"]
    for optimizer, agrees in (("adam", True), ("lazy_adam", False)):
        torch.manual_seed(0)
        start = build_model(cfg["reference"], vocabs)
        engine = build_model(cfg["torchrec"], vocabs, sparse_optimizer=optimizer, sparse_lr=1e-3)
        copy_weights(start, engine)
        _train_steps(engine, torch.optim.Adam(engine.dense_parameters(), lr=1e-3), batches, 8, 3e-4, clip)
        engine.eval()
        got = engine(x)["logit"]
        if agrees:
            # Clipped: the engine's norm leaves out the rows no batch looked up (their emb_reg * w;
            # embedding/sparse_adam.py "Clipping"), a 1e-3 part of this small threshold's factor.
            rtol, atol = (1e-4, 1e-5) if clip is None else (1e-3, 1e-4)
            torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
        else:
            assert (got - want).abs().max() > 1e-3


def test_resume_from_state_dicts_continues_exactly():
    """A run stopped mid-way (weights caught up by state_dict, the optimizer's state saved) and resumed
    ends where the uninterrupted run ends."""
    from tf4ctr_fast.config import load_config
    from tf4ctr_fast.models import build_model

    vocabs = [40, 300, 6]
    cfg = load_config(None, ["model.name=DNN", "model.emb_reg=0.1", "model.embedding_dim=8",
                             "model.net_dropout=0", "model.backend=torchrec"]).model
    batches = _batches(vocabs, 12)

    def fresh():
        torch.manual_seed(0)
        model = build_model(cfg, vocabs, sparse_optimizer="adam", sparse_lr=1e-3)
        return model, torch.optim.Adam(model.dense_parameters(), lr=1e-3)

    whole, whole_opt = fresh()
    _train_steps(whole, whole_opt, batches)
    first, first_opt = fresh()
    _train_steps(first, first_opt, batches[:5])
    saved = (first.state_dict(), first_opt.state_dict(), first.sparse_optimizer().state_dict())
    second, second_opt = fresh()
    second.load_state_dict(saved[0])
    second_opt.load_state_dict(saved[1])
    second.sparse_optimizer().load_state_dict(saved[2])
    _train_steps(second, second_opt, batches[5:])
    for (key, got), want in zip(second.state_dict().items(), whole.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=key)


def test_optimizer_state_of_another_kind_is_refused():
    from tf4ctr_fast.config import load_config
    from tf4ctr_fast.errors import InputError
    from tf4ctr_fast.models import build_model

    cfg = load_config(None, ["model.name=DNN", "model.backend=torchrec"]).model
    adam = build_model(cfg, [10, 20], sparse_optimizer="adam").sparse_optimizer()
    lazy = build_model(cfg, [10, 20], sparse_optimizer="lazy_adam").sparse_optimizer()
    with pytest.raises(InputError, match="lazy_adam"):
        adam.load_state_dict(lazy.state_dict())


@pytest.mark.skipif(not HAS_KERNELS, reason="compiled kernels not built")
def test_kernels_refuse_a_gradient_of_another_width_or_batch():
    dims, vocabs = (8, 4), (30, 7)
    layout = _layout(dims, vocabs)
    ids, offsets, grad = _batch(torch.Generator().manual_seed(0), vocabs, dims, 5, 3, torch.int64)
    state = _state(dims, vocabs, torch.Generator().manual_seed(1))
    for bad, what in ((grad[:, :-1], "width"), (grad[:-1], "offsets need")):
        with pytest.raises(RuntimeError, match=what):
            torch.ops.tf4ctr_fast.sparse_adam_grad_norm_sq(*layout, ids, offsets, bad)
        with pytest.raises(RuntimeError, match=what):
            torch.ops.tf4ctr_fast.sparse_adam_step(*state, *layout, ids, offsets, bad, None, 1, 1e-3, 0.9, 0.999,
                                                   1e-8, 0.0, True)


# AFN+ and DLF are the models whose trajectory rounding sets even without BatchNorm: with the L2 on
# (DLF: and clipped) a 1e-7 relative nudge of the tables moves the reference backend's own logits after
# 16 steps by as much as the two backends differ (docs/embedding.md "Sparse Adam",
# scripts/backend_divergence.py).
SENSITIVE = {
    # the logarithmic layer reads log|e|, whose gradient is 1/e at embeddings of about 1e-4
    "AFN": ["model.params.logarithmic_neurons=16", "model.params.afn_hidden_units=[16]",
            "model.params.dnn_hidden_units=[16]"],
    # FMB's LayerNorm over interactions of 1e-4 embeddings (variance far below its eps): the MLP after it
    # gets gradients at Adam's eps, where rounding decides the step
    "DLF": ["model.params.num_layers=2", "model.params.block_hidden_units=[32]",
            "model.params.head_hidden_units=[16]"],
}


@pytest.mark.parametrize("name", sorted(SENSITIVE))
def test_rounding_sensitive_models_train_like_the_reference_backend_without_l2(name):
    """Without L2 and unclipped the engine ends where the reference backend ends; with them both
    backends' runs of these models are independent draws (see SENSITIVE)."""
    from tf4ctr_fast.models import build_model
    from tf4ctr_fast.models.state_dicts import copy_weights

    vocabs = [40, 300, 6]
    cfg = _backend_configs([f"model.name={name}", "model.emb_reg=0", "model.embedding_dim=8", "model.net_dropout=0",
                            "model.batch_norm=false", *SENSITIVE[name]])
    batches = _batches(vocabs, 16)
    torch.manual_seed(0)
    reference = build_model(cfg["reference"], vocabs)
    engine = build_model(cfg["torchrec"], vocabs, sparse_optimizer="adam", sparse_lr=1e-3)
    copy_weights(reference, engine)
    for model in (reference, engine):
        _train_steps(model, torch.optim.Adam(model.dense_parameters(), lr=1e-3), batches, 8, 3e-4)
        model.eval()
    x = _batches(vocabs, 1, batch=400, seed=4)[0][0]
    torch.testing.assert_close(engine(x)["logit"], reference(x)["logit"], rtol=1e-4, atol=1e-4)
