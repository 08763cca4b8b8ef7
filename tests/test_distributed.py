"""Two CPU ranks (gloo) train a tiny sharded TF4CTR and match one process running the same objective
(tests/data_parallel.py); sharded checkpoints gather into the unsharded layout and load back. One spawn
covers table-wise and column-wise sharding (process start-up dominates the cost)."""
import warnings

import pytest
import torch

warnings.filterwarnings("ignore", module="torchrec")
warnings.filterwarnings("ignore", module="fbgemm_gpu")

from data_parallel import run_on_ranks, train_single_process_twin  # noqa: E402
from tf4ctr_fast.config import ModelConfig  # noqa: E402
from tf4ctr_fast.distributed import shard_model  # noqa: E402
from tf4ctr_fast.errors import InputError  # noqa: E402
from tf4ctr_fast.models import build_model  # noqa: E402

NAMES = ["a", "b", "c", "d"]
VOCAB = [37, 19, 11, 5]
WORLD = 2
STEPS = 4
DENSE_LR, SPARSE_LR = 0.05, 0.3
SHARDINGS = ("table_wise", "column_wise")
# No BatchNorm: per-rank batch statistics would differ from one process's by design.
CFG = ModelConfig(embedding_dim=16, mlp_s_hidden=[16], mlp_c_hidden=[16, 8], batch_norm=False, net_dropout=0.0,
                  emb_reg=0.5, dfm="WSF", backend="torchrec")


def _model(sharded: bool):
    return build_model(CFG, VOCAB, field_names=NAMES, sparse_optimizer="sgd", sparse_lr=SPARSE_LR,
                       fused=not sharded)


def _batches():
    gen = torch.Generator().manual_seed(7)
    for _ in range(STEPS):
        ids = torch.stack([torch.randint(0, v, (2 * 12,), generator=gen) for v in VOCAB], dim=1)
        yield ids, torch.randint(0, 2, (2 * 12,), generator=gen).float()


def _ranks_main(out_path: str) -> None:
    import logging
    logging.disable(logging.WARNING)
    from data_parallel import train_sharded
    from tf4ctr_fast.distributed import init_distributed, load_unsharded_state_dict, unsharded_state_dict
    rank, world, _ = init_distributed()
    results = {}
    for sharding in SHARDINGS:
        torch.manual_seed(0)
        model = _model(sharded=True)
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        dmp = shard_model(model, sharding)
        losses = train_sharded(dmp, _batches(), rank, world, DENSE_LR)
        trained = unsharded_state_dict(dmp)
        # Unsharded -> sharded: load the start weights back and predict.
        load_unsharded_state_dict(dmp, start)
        dmp.eval()
        with torch.no_grad():
            ids, _ = next(_batches())
            logit = dmp(ids)["logit"]
        if rank == 0:
            results[sharding] = {"start": start, "losses": losses, "trained": trained, "logit": logit}
    if rank == 0:
        torch.save(results, out_path)


@pytest.fixture(scope="module")
def ranks_results(tmp_path_factory):
    return run_on_ranks(WORLD, _ranks_main, tmp_path_factory.mktemp("dist"))


def _single_process_twin(start):
    model = _model(sharded=False)
    model.load_state_dict(start)
    return model, train_single_process_twin(model, _batches(), WORLD, DENSE_LR)


@pytest.mark.parametrize("sharding", SHARDINGS)
def test_sharded_training_matches_single_process(ranks_results, sharding):
    got = ranks_results[sharding]
    twin, losses = _single_process_twin(got["start"])
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(losses), rtol=1e-5, atol=0)
    assert losses[-1] < losses[0]
    expected = twin.state_dict()
    assert got["trained"].keys() == expected.keys()     # gathered into the unsharded layout
    for key, value in expected.items():
        torch.testing.assert_close(got["trained"][key], value, rtol=1e-5, atol=1e-8, msg=key)
    assert not torch.equal(got["trained"]["ssem.ebc.embedding_bags.a__hard.weight"],
                           got["start"]["ssem.ebc.embedding_bags.a__hard.weight"])


@pytest.mark.parametrize("sharding", SHARDINGS)
def test_unsharded_checkpoint_loads_into_sharded_model(ranks_results, sharding):
    got = ranks_results[sharding]
    model = _model(sharded=False)
    model.load_state_dict(got["start"])
    model.eval()
    with torch.no_grad():
        ids, _ = next(_batches())
        torch.testing.assert_close(got["logit"], model(ids)["logit"], rtol=1e-6, atol=1e-7)


def test_row_wise_needs_cuda():
    with pytest.raises(InputError, match="row_wise sharding needs CUDA"):
        shard_model(_model(sharded=True), "row_wise", device=torch.device("cpu"))


def test_fused_model_cannot_be_sharded():
    with pytest.raises(InputError, match="fused=False"):
        shard_model(_model(sharded=False), "table_wise", device=torch.device("cpu"))
