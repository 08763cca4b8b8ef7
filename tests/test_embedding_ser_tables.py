"""SER tables on TorchRec/FBGEMM against plain-torch twins: layout, padding, id checks, multi-valued
pooling, the batch regularizer, and the fused sparse updates (values and updated rows); then the fast
paths against their plain forms, bit for bit."""
import warnings

import pytest
import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", module="torchrec")
warnings.filterwarnings("ignore", module="fbgemm_gpu")

from torchrec.sparse.jagged_tensor import KeyedJaggedTensor  # noqa: E402

import tf4ctr_fast.embedding.features as features_module  # noqa: E402
from tf4ctr_fast.embedding import SERTables, SERTablesConfig, ids_to_kjt  # noqa: E402
from tf4ctr_fast.embedding.features import (FieldBags, append_unique_rows, field_bags_to_kjt,  # noqa: E402
                                            ids_to_field_bags, kjt_to_field_bags, row_offsets_for,
                                            sorted_distinct_rows)
from tf4ctr_fast.embedding.fused_tables import _SplitPooled  # noqa: E402
from tf4ctr_fast.errors import InputError  # noqa: E402
from tf4ctr_fast.layers.ssem import SER  # noqa: E402

NAMES = ["user", "item", "tag"]
VOCAB = [11, 23, 5]
DIM = 8


def _tables(**kw) -> SERTables:
    cfg = dict(field_names=NAMES, vocab_sizes=VOCAB, dim=DIM, optimizer="sgd", lr=0.1)
    cfg.update(kw)
    return SERTables(SERTablesConfig(**cfg))


def _copy_from_reference(tables: SERTables, ref: SER) -> None:
    weights = tables.table_weights()
    with torch.no_grad():
        for i, name in enumerate(NAMES):
            weights[f"{name}__easy"].copy_(ref.easy.tables[i].weight)
            weights[f"{name}__hard"].copy_(ref.hard.tables[i].weight)


def _random_ids(batch: int, gen: torch.Generator) -> torch.Tensor:
    # Small vocabularies make duplicates and padding (0) frequent: the cases that differ from dense.
    return torch.stack([torch.randint(0, v, (batch,), generator=gen) for v in VOCAB], dim=1)


def _batch_rows_l2(ref: SER, ids: torch.Tensor, emb_reg: float) -> torch.Tensor:
    """Twin of the engine's regularizer: (lambda/2) * sum ||row||^2 over the distinct rows looked up."""
    total = torch.zeros(())
    for f in range(len(NAMES)):
        rows = ids[:, f].unique()
        total = total + ref.easy.tables[f].weight[rows].pow(2).sum() + ref.hard.tables[f].weight[rows].pow(2).sum()
    return emb_reg / 2 * total


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain_ebc"])
def test_layout_matches_reference_ser(fused):
    """Both the fused module and the plain EmbeddingBagCollection (what DMP shards)."""
    torch.manual_seed(0)
    ref = SER(VOCAB, DIM)
    tables = SERTables(SERTablesConfig(NAMES, VOCAB, dim=DIM, optimizer="sgd"), fused=fused)
    _copy_from_reference(tables, ref)
    ids = _random_ids(64, torch.Generator().manual_seed(1))
    e_s, e_c = tables(ids)
    r_s, r_c = ref(ids)
    assert e_s.shape == (64, len(NAMES) * DIM // 2) and e_c.shape == (64, len(NAMES) * DIM)
    torch.testing.assert_close(e_s, r_s, rtol=1e-6, atol=0)
    torch.testing.assert_close(e_c, r_c, rtol=1e-6, atol=0)


def test_init_is_reference_init():
    torch.manual_seed(0)
    weights = _tables().table_weights()
    for name, w in weights.items():
        assert torch.all(w[0] == 0), name                      # padding row
        assert 0.5e-4 < w[1:].std().item() < 2e-4, name          # N(0, 1e-4)


def test_ids_to_kjt_drops_padding():
    ids = torch.tensor([[3, 0, 1], [0, 5, 2]])
    kjt = ids_to_kjt(ids, NAMES)
    assert kjt.keys() == NAMES and kjt.stride() == 2
    assert kjt.lengths().tolist() == [1, 0, 0, 1, 1, 1]
    assert kjt.values().tolist() == [3, 5, 1, 2]


@pytest.mark.parametrize("bad, field", [((0, 1), "item"), ((2, 2), "tag")])
@pytest.mark.parametrize("value", [-1, "vocab"])
def test_out_of_range_id_names_field_and_id(bad, field, value):
    ids = torch.ones(3, 3, dtype=torch.long)
    v = VOCAB[bad[1]] if value == "vocab" else value
    ids[bad] = v
    with pytest.raises(InputError, match=f"field '{field}': id {v} "):
        _tables()(ids)


def test_out_of_range_id_in_kjt_is_caught():
    kjt = KeyedJaggedTensor(keys=NAMES, values=torch.tensor([1, 2, 23, 4]),
                            lengths=torch.tensor([1, 1, 2, 0, 0, 0], dtype=torch.int32))
    with pytest.raises(InputError, match="field 'item': id 23 "):
        _tables()(kjt)


def test_config_errors():
    with pytest.raises(InputError, match="embedding_dim"):
        _tables(dim=12)
    # FBGEMM's CPU TBE has no Adam: on CPU it is ours (embedding/sparse_adam.py)
    assert type(_tables(optimizer="adam").sparse_optimizer()).__name__ == "RowSparseAdam"
    with pytest.raises(InputError, match="unknown sparse optimizer"):
        _tables(optimizer="adamw")
    with pytest.raises(InputError, match="pooling"):
        _tables(pooling={"user": "max"})


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_multivalued_bags_match_embedding_bag(mode):
    """KJT input with bags of 0..3 ids (padding inside bags ignored) against F.embedding_bag."""
    torch.manual_seed(0)
    tables = _tables(pooling={"item": mode, "tag": mode})
    gen = torch.Generator().manual_seed(3)
    batch = 16
    lengths = torch.randint(0, 4, (len(NAMES), batch), generator=gen)
    bags = [[torch.randint(0, VOCAB[f], (int(n),), generator=gen) for n in lengths[f]] for f in range(len(NAMES))]
    values = torch.cat([b for field in bags for b in field])
    kjt = KeyedJaggedTensor(keys=NAMES, values=values, lengths=lengths.reshape(-1).int())
    e_s, e_c = tables(kjt)

    weights = tables.table_weights()
    expect = {"easy": [], "hard": []}
    for f, name in enumerate(NAMES):
        field_mode = mode if name in ("item", "tag") else "sum"
        for kind in expect:
            w = weights[f"{name}__{kind}"].detach()
            # Padding does not count toward a bag, as with FuxiCTR's masked pooling.
            rows = [b[b != 0] for b in bags[f]]
            pooled = [F.embedding_bag(r, w, torch.tensor([0]), mode=field_mode) if len(r) else
                      torch.zeros(1, w.shape[1]) for r in rows]
            expect[kind].append(torch.cat(pooled))
    torch.testing.assert_close(e_s, torch.cat(expect["easy"], 1), rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(e_c, torch.cat(expect["hard"], 1), rtol=1e-6, atol=1e-12)


def test_unique_row_bags_hold_each_looked_up_row_once():
    ids = torch.tensor([[3, 7, 1], [3, 0, 1], [4, 7, 2], [0, 9, 1]])
    offsets = torch.tensor([0] + VOCAB).cumsum(0)
    kjt = field_bags_to_kjt(append_unique_rows(kjt_to_field_bags(ids_to_kjt(ids, NAMES)), offsets), NAMES)
    assert kjt.stride() == 4 + 2          # at most 2 distinct ids in one field
    per_key = kjt.to_dict()
    assert per_key["user"].lengths().tolist() == [1, 1, 1, 0, 1, 1]
    assert per_key["user"].values().tolist() == [3, 3, 4, 3, 4]
    assert per_key["item"].values().tolist() == [7, 7, 9, 7, 9]
    assert per_key["tag"].lengths().tolist() == [1, 1, 1, 1, 1, 1]
    assert per_key["tag"].values().tolist() == [1, 1, 2, 1, 1, 2]


def test_regularizer_value_and_absent_without_grad():
    torch.manual_seed(0)
    ref = SER(VOCAB, DIM)
    tables = _tables(emb_reg=0.7)
    _copy_from_reference(tables, ref)
    ids = _random_ids(32, torch.Generator().manual_seed(2))
    tables(ids)
    torch.testing.assert_close(tables.regularization(), _batch_rows_l2(ref, ids, 0.7), rtol=1e-6, atol=0)
    with torch.no_grad():
        tables(ids)
    assert tables.regularization().item() == 0.0


@pytest.mark.parametrize("optimizer", ["sgd", "rowwise_adagrad"])
def test_fused_update_matches_torch_twin(optimizer):
    """Three steps of loss = <e, g> + batch regularizer: the fused kernel vs the same update written
    in torch on the reference SER (rows not looked up must not move)."""
    torch.manual_seed(0)
    lr, eps, reg = 0.5, 1e-8, 0.4
    ref = SER(VOCAB, DIM)
    tables = _tables(optimizer=optimizer, lr=lr, eps=eps, emb_reg=reg)
    _copy_from_reference(tables, ref)
    start = {k: w.detach().clone() for k, w in tables.table_weights().items()}
    state = {id(p): torch.zeros(p.shape[0]) for p in ref.parameters()}
    gen = torch.Generator().manual_seed(4)
    touched = [set() for _ in NAMES]
    for _ in range(3):
        ids = _random_ids(24, gen)
        for f in range(len(NAMES)):
            touched[f] |= set(ids[:, f].tolist()) - {0}
        g_s = torch.randn(24, len(NAMES) * DIM // 2, generator=gen)
        g_c = torch.randn(24, len(NAMES) * DIM, generator=gen)
        e_s, e_c = tables(ids)
        ((e_s * g_s).sum() + (e_c * g_c).sum() + tables.regularization()).backward()

        r_s, r_c = ref(ids)
        ref.zero_grad()
        ((r_s * g_s).sum() + (r_c * g_c).sum() + _batch_rows_l2(ref, ids, reg)).backward()
        with torch.no_grad():
            for p in ref.parameters():
                if optimizer == "sgd":
                    p -= lr * p.grad
                else:  # FBGEMM's exact row-wise Adagrad: one accumulator per row, mean of squares
                    rows = p.grad.abs().sum(1) > 0
                    acc = state[id(p)]
                    acc[rows] += p.grad[rows].pow(2).mean(1)
                    p[rows] -= lr * p.grad[rows] / (acc[rows].sqrt() + eps)[:, None]
    weights = tables.table_weights()
    for f, name in enumerate(NAMES):
        for kind, twin in (("easy", ref.easy.tables[f]), ("hard", ref.hard.tables[f])):
            w = weights[f"{name}__{kind}"]
            torch.testing.assert_close(w, twin.weight, rtol=1e-5, atol=1e-7, msg=f"{name}__{kind}")
            moved = (w != start[f"{name}__{kind}"]).any(1)
            assert set(moved.nonzero().view(-1).tolist()) == touched[f], f"{name}__{kind}"


def test_sparse_optimizer_lr_reaches_kernel():
    tables = _tables(lr=0.1)
    opt = tables.sparse_optimizer()
    for group in opt.param_groups:
        group["lr"] = 0.0
    opt.step()
    before = {k: w.detach().clone() for k, w in tables.table_weights().items()}
    e_s, e_c = tables(torch.tensor([[1, 2, 3]]))
    (e_s.sum() + e_c.sum()).backward()
    for k, w in tables.table_weights().items():
        assert torch.equal(w, before[k]), k


# ---- the fast paths: unique rows, ids -> bags, the direct TBE lookup, the one-buffer backward ------------

def _random_bags(gen: torch.Generator, batch: int, max_len: int, vocab=VOCAB) -> FieldBags:
    """Multi-valued bags of 0..max_len ids per (field, row), padding (0) and duplicates included."""
    lengths = torch.randint(0, max_len + 1, (len(vocab), batch), generator=gen)
    values = torch.cat([torch.randint(0, v, (int(n),), generator=gen) for v, n in zip(vocab, lengths.sum(1))])
    return FieldBags(values, lengths.to(torch.int32))


def _unique_rows_twin(bags: FieldBags, vocab) -> FieldBags:
    """append_unique_rows written as the per-field loop it stands for."""
    per_key = bags.values.split(bags.lengths.sum(1).tolist())
    distinct = [v.unique() for v in per_key]
    extra = max(len(d) for d in distinct)
    values = torch.cat([torch.cat([v, d]) for v, d in zip(per_key, distinct)])
    extra_lengths = torch.tensor([[1] * len(d) + [0] * (extra - len(d)) for d in distinct], dtype=torch.int32)
    return FieldBags(values, torch.cat([bags.lengths, extra_lengths.view(len(vocab), extra)], 1))


@pytest.mark.parametrize("rows_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("method", ["seen_mask", "sort"])
@pytest.mark.parametrize("batch, max_len", [(1, 1), (7, 1), (33, 3), (64, 0)])
def test_append_unique_rows_matches_per_field_loop(monkeypatch, rows_dtype, method, batch, max_len):
    """Both ways of finding the distinct rows (a seen mask for small vocabularies, a sort for large
    ones), on random bags with padding, empty bags (all of them when max_len is 0) and duplicates."""
    monkeypatch.setattr(features_module, "SEEN_MASK_MAX_ROWS_PER_ID", 10**9 if method == "seen_mask" else 0)
    offsets = row_offsets_for(VOCAB).to(rows_dtype)
    for seed in range(5):
        bags = _random_bags(torch.Generator().manual_seed(seed), batch, max_len)
        got, want = append_unique_rows(bags, offsets), _unique_rows_twin(bags, VOCAB)
        assert got.values.dtype == rows_dtype
        assert got.values.tolist() == want.values.tolist()
        assert torch.equal(got.lengths, want.lengths)


@pytest.mark.parametrize("num_rows", [1, 50, 10_000])
def test_sorted_distinct_rows_is_torch_unique(monkeypatch, num_rows):
    gen = torch.Generator().manual_seed(num_rows)
    for limit in (0, 10**9):       # sort, seen mask
        monkeypatch.setattr(features_module, "SEEN_MASK_MAX_ROWS_PER_ID", limit)
        for n in (0, 1, 100):
            rows = torch.randint(0, num_rows, (n,), generator=gen, dtype=torch.int32)
            got = sorted_distinct_rows(rows, num_rows)
            assert got.dtype == rows.dtype and torch.equal(got, torch.unique(rows))


def test_row_offsets_use_int32_when_rows_fit():
    assert row_offsets_for(VOCAB).tolist() == [0, 11, 34, 39] and row_offsets_for(VOCAB).dtype == torch.int32
    assert row_offsets_for([2**30, 2**30]).dtype == torch.int64


def test_ids_to_field_bags_fast_and_padding_paths_agree_with_ids_to_kjt():
    bounds = torch.tensor(VOCAB)
    for ids in (torch.tensor([[3, 1, 1], [2, 5, 2]]), torch.tensor([[3, 0, 1], [0, 5, 2]])):
        bags = ids_to_field_bags(ids, NAMES, bounds)
        kjt = ids_to_kjt(ids, NAMES)
        assert bags.values.tolist() == kjt.values().tolist()
        assert bags.lengths.dtype == torch.int32 and bags.lengths.reshape(-1).tolist() == kjt.lengths().tolist()


@pytest.mark.parametrize("padding", [False, True])
def test_out_of_range_id_message_with_and_without_padding(padding):
    """The one-pass check fails over to check_ids, which names the culprit either way."""
    ids = torch.ones(4, 3, dtype=torch.long)
    if padding:
        ids[0, 0] = 0
    ids[3, 1] = 23
    with pytest.raises(InputError, match=r"field 'item': id 23 \(batch row 3\) is outside \[0, 23\)"):
        _tables()(ids)


@pytest.mark.parametrize("lengths", [[1, 1, 2, 0, 1, -1], [1, 1, 1, 0, 0, 0]])
def test_malformed_kjt_lengths_are_an_input_error(lengths):
    kjt = KeyedJaggedTensor(keys=NAMES, values=torch.tensor([1, 2, 3, 4]),
                            lengths=torch.tensor(lengths, dtype=torch.int32))
    with pytest.raises(InputError, match="lengths must be >= 0 and sum to"):
        _tables()(kjt)


def _twin_steps(tables: SERTables, batches, gen: torch.Generator):
    """Outputs, regularizer and table weights after a training step on each batch."""
    seen = []
    for x in batches:
        e_s, e_c = tables(x)
        reg = tables.regularization()
        g_s, g_c = torch.randn(e_s.shape, generator=gen), torch.randn(e_c.shape, generator=gen)
        ((e_s * g_s).sum() + (e_c * g_c).sum() + reg).backward()
        seen.append((e_s.detach().clone(), e_c.detach().clone(), reg.detach().clone()))
    return seen, {k: w.detach().clone() for k, w in tables.table_weights().items()}


def _mixed_batches():
    """ids with and without padding, and a mean-pooled multi-valued KJT with padding inside bags."""
    gen = torch.Generator().manual_seed(7)
    ids = _random_ids(40, gen)
    bags = _random_bags(gen, 40, 3)
    kjt = KeyedJaggedTensor(keys=NAMES, values=bags.values, lengths=bags.lengths.reshape(-1))
    return [ids, ids.clamp(min=1), kjt]


@pytest.mark.parametrize("optimizer", ["sgd", "rowwise_adagrad"])
def test_direct_tbe_path_equals_torchrec_kjt_path_bit_for_bit(optimizer):
    """The fused fast path (FieldBags straight into the TBE, FBGEMM's bounds check off, one gradient
    buffer) against the same tables run through torchrec's FusedEmbeddingBagCollection.forward with a
    KJT: same outputs, regularizer and updated rows, exactly."""
    kw = dict(optimizer=optimizer, lr=0.3, emb_reg=0.2, pooling={"tag": "mean"})
    torch.manual_seed(0)
    fast = _tables(**kw)
    via_kjt = _tables(**kw)
    via_kjt.load_state_dict(fast.state_dict())
    assert fast._single_tbe, "torchrec's FusedEmbeddingBagCollection layout changed: the fast path is off"
    via_kjt._single_tbe = False
    fast_out, fast_w = _twin_steps(fast, _mixed_batches(), torch.Generator().manual_seed(1))
    kjt_out, kjt_w = _twin_steps(via_kjt, _mixed_batches(), torch.Generator().manual_seed(1))
    for a, b in zip(fast_out, kjt_out):
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    for name in fast_w:
        assert torch.equal(fast_w[name], kjt_w[name]), name


def test_fbgemm_bounds_check_is_back_on_after_a_lookup():
    """Off only inside SERTables' own (checked) lookup: a direct call of tables.ebc keeps it."""
    tables = _tables(emb_reg=0.1)
    tbe = tables.ebc._emb_modules[0]._emb_module
    before = tbe.bounds_check_mode_int
    assert before != 0      # BoundsCheckMode.NONE
    e_s, e_c = tables(_random_ids(8, torch.Generator().manual_seed(0)))
    (e_s.sum() + e_c.sum() + tables.regularization()).backward()
    assert tbe.bounds_check_mode_int == before


@pytest.mark.parametrize("use", ["all", "e_s only", "no regularizer", "regularizer only"])
def test_split_backward_equals_autograd_of_slicing(use):
    """_SplitPooled's one-buffer backward against autograd through plain slices, bit for bit,
    including outputs that do not reach the loss (their part of the gradient is zero)."""
    gen = torch.Generator().manual_seed(3)
    pooled = torch.randn(9, 12, generator=gen, requires_grad=True)
    g_s, g_c = torch.randn(6, 4, generator=gen), torch.randn(6, 8, generator=gen)
    lam = 0.37

    def loss(e_s, e_c, reg):
        terms = {"e_s": (e_s * g_s).sum(), "e_c": (e_c * g_c).sum(), "reg": 3 * reg}
        wanted = {"all": ("e_s", "e_c", "reg"), "e_s only": ("e_s",), "no regularizer": ("e_s", "e_c"),
                  "regularizer only": ("reg",)}[use]
        return sum(terms[k] for k in wanted)

    e_s, e_c, reg = _SplitPooled.apply(pooled, 6, (4, 8), lam)
    (got,) = torch.autograd.grad(loss(e_s, e_c, reg), pooled)
    plain = (pooled[:6, :4], pooled[:6, 4:], (lam / 2) * pooled[6:].pow(2).sum())
    assert torch.equal(reg, plain[2])
    (want,) = torch.autograd.grad(loss(*plain), pooled)
    assert torch.equal(got, want)


def test_inference_outputs_equal_training_outputs():
    torch.manual_seed(0)
    tables = _tables(emb_reg=0.5, pooling={"item": "mean"})
    for x in _mixed_batches():
        with torch.no_grad():
            e_s, e_c = tables(x)
        assert not e_s.requires_grad
        t_s, t_c = tables(x)
        assert torch.equal(e_s, t_s) and torch.equal(e_c, t_c)


def test_variable_batch_kjt_is_an_input_error():
    kjt = KeyedJaggedTensor(keys=NAMES, values=torch.tensor([1, 2, 3, 4]),
                            lengths=torch.tensor([1, 1, 1, 1], dtype=torch.int32),
                            stride_per_key_per_rank=[[2], [1], [1]])
    with pytest.raises(InputError, match="variable-batch"):
        _tables()(kjt)
