"""Multi-valued fields end to end: embedding bags in the reference models (nn.EmbeddingBag) and in the
TorchRec SER tables (KJT keys) agree with a hand loop and with each other; a prepared CSV with a bag
field trains through both backends (device and streaming loaders) to a planted signal that only the
bag carries; checkpoints rebuild the bag tables."""
import dataclasses
import warnings

import numpy as np
import pytest
import torch
import yaml

warnings.filterwarnings("ignore", module="torchrec")
warnings.filterwarnings("ignore", module="fbgemm_gpu")

from tf4ctr_fast.config import DatasetConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from tf4ctr_fast.data.columns import load_prepared  # noqa: E402
from tf4ctr_fast.data.schema_csv import prepare_schema_csv  # noqa: E402
from tf4ctr_fast.errors import InputError  # noqa: E402
from tf4ctr_fast.features import BagField, Features  # noqa: E402
from tf4ctr_fast.models import build_model  # noqa: E402
from tf4ctr_fast.layers.embedding import FieldEmbeddings  # noqa: E402
from tf4ctr_fast.train.checkpoint import load_checkpoint  # noqa: E402
from tf4ctr_fast.train.runlog import read_log  # noqa: E402
from tf4ctr_fast.train.trainer import predict_proba, train  # noqa: E402

VOCAB = [11, 6]
BAGS = [BagField("tags", 13, "mean"), BagField("genres", 7, "sum")]


def random_features(gen: torch.Generator, batch: int = 9) -> Features:
    ids = torch.stack([torch.randint(0, v, (batch,), generator=gen) for v in VOCAB], dim=1)
    bags = {}
    for f in BAGS:
        lengths = torch.randint(0, 4, (batch,), generator=gen)
        lengths[0] = 0                                          # an empty bag pools to zero
        values = torch.randint(1, f.vocab_size, (int(lengths.sum()),), generator=gen)
        bags[f.name] = (values, torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]))
    return Features(ids, bags)


def test_field_embeddings_pool_each_bag_like_a_loop():
    torch.manual_seed(0)
    emb = FieldEmbeddings(VOCAB, 4, BAGS)
    x = random_features(torch.Generator().manual_seed(1))
    out = emb(x)
    assert out.shape == (9, (len(VOCAB) + len(BAGS)) * 4) and emb.output_dim == out.shape[1]
    expected = []
    for row in range(9):
        parts = [emb.tables[f].weight[x.ids[row, f]] for f in range(len(VOCAB))]
        for f, table in zip(BAGS, emb.bags):
            values, offsets = x.bags[f.name]
            rows = table.weight[values[offsets[row]:offsets[row + 1]]]
            pooled = rows.sum(0) if f.pooling == "sum" else rows.mean(0) if len(rows) else torch.zeros(4)
            parts.append(pooled)
        expected.append(torch.cat(parts))
    torch.testing.assert_close(out, torch.stack(expected))
    out.pow(2).sum().backward()
    assert all(table.weight.grad is not None and table.weight.grad.abs().sum() > 0 for table in emb.bags)
    assert len(emb.weights()) == len(VOCAB) + len(BAGS)       # the regularizer covers the bag tables


def test_missing_or_extra_bags_name_the_fields():
    emb = FieldEmbeddings(VOCAB, 4, BAGS)
    x = random_features(torch.Generator().manual_seed(2))
    with pytest.raises(InputError, match="genres"):
        emb(Features(x.ids, {"tags": x.bags["tags"]}))
    with pytest.raises(InputError, match="offsets"):
        emb(Features(x.ids, {**x.bags, "tags": (x.bags["tags"][0], x.bags["tags"][1][:-1])}))
    with pytest.raises(InputError, match="ids \\[batch, fields\\] only"):
        FieldEmbeddings(VOCAB, 4)(x)


@pytest.mark.parametrize("name,ssem", [("TF4CTR", "SER"), ("TF4CTR", "GM"), ("TF4CTR", "MoE"),
                                       ("DualMLP", "share"), ("DNN", "SER")])
def test_every_reference_model_takes_bags(name, ssem):
    cfg = ModelConfig(name=name, ssem=ssem, embedding_dim=4, mlp_s_hidden=[8], mlp_c_hidden=[8],
                      dnn_hidden=[8], head="reference")
    model = build_model(cfg, VOCAB, BAGS)
    x = random_features(torch.Generator().manual_seed(3))
    out = model.loss(x, torch.ones(9))
    assert out["logit"].shape == (9,) and torch.isfinite(out["loss"])
    out["loss"].backward()


def test_torchrec_ser_tables_match_the_reference_on_the_same_weights():
    pytest.importorskip("torchrec")
    from tf4ctr_fast.embedding.features import features_to_kjt
    from tf4ctr_fast.models import engine_to_reference_state_dict, reference_to_engine_state_dict

    names = ["u", "i"]
    cfg = ModelConfig(embedding_dim=8, mlp_s_hidden=[8], mlp_c_hidden=[8], net_dropout=0.0, head="reference")
    torch.manual_seed(0)
    ref = build_model(cfg, VOCAB, BAGS)
    eng = build_model(dataclasses.replace(cfg, backend="torchrec"), VOCAB, BAGS, field_names=names,
                      sparse_optimizer="sgd")
    state = reference_to_engine_state_dict(ref.state_dict(), names, [f.name for f in BAGS])
    eng.load_state_dict(state)
    back = engine_to_reference_state_dict(eng.state_dict(), names, [f.name for f in BAGS])
    assert all(torch.equal(back[k], v) for k, v in ref.state_dict().items())
    ref.eval(), eng.eval()
    x = random_features(torch.Generator().manual_seed(4))
    for got in (eng(x), eng(features_to_kjt(x.ids, names, x.bags))):
        for key in ("logit", "z_s", "z_c"):
            torch.testing.assert_close(got[key], ref(x)[key], rtol=1e-5, atol=1e-6)
    bad = Features(x.ids, {**x.bags, "tags": (x.bags["tags"][0] + 13, x.bags["tags"][1])})
    with pytest.raises(InputError, match="'tags'"):
        eng(bad)


# -- a prepared CSV whose clicks only the bag field predicts ---------------------------------------


def planted_csv_dataset(tmp_path, rows: int = 3000, seed: int = 0):
    """label = 1 when the row's tags contain 'hot', 5% flipped; user is noise. The best AUC is ~0.91
    (a model blind to the tags gets ~0.5)."""
    rng = np.random.default_rng(seed)
    tags = np.array(["hot", "cold", "warm", "dry", "wet", "new", "old"])
    lines = ["label,user,tags"]
    for _ in range(rows):
        bag = rng.choice(tags, size=rng.integers(0, 4), replace=False)
        label = int("hot" in bag) ^ int(rng.random() < 0.05)
        lines.append(f"{label},{rng.integers(0, 30)},{'|'.join(bag)}")
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    schema = {"columns": [{"name": "label", "kind": "label"},
                          {"name": "user", "kind": "categorical", "codec": "int"},
                          {"name": "tags", "kind": "multi_valued", "separator": "|", "max_len": 3,
                           "pooling": "mean"}],
              "split": {"by": "ratio", "ratios": [0.7, 0.15, 0.15]}}
    (tmp_path / "schema.yaml").write_text(yaml.safe_dump(schema))
    cfg = DatasetConfig(name="planted_bags", format="csv", train=str(tmp_path / "data.csv"),
                        schema=str(tmp_path / "schema.yaml"), min_count=1)
    return cfg, load_prepared(prepare_schema_csv(cfg, tmp_path / "prepared", schema=cfg.schema))


def run_cfg(dataset, out_dir, backend: str, loader: str) -> RunConfig:
    model = ModelConfig(backend=backend, embedding_dim=8, mlp_s_hidden=[16], mlp_c_hidden=[16],
                        net_dropout=0.0, emb_reg=0.0)
    tc = TrainConfig(batch_size=128, eval_batch_size=256, epochs=4, lr=0.01, sparse_lr=0.1, device="cpu",
                     out_dir=str(out_dir), progress=False, loader=loader, num_threads=1)
    return RunConfig(dataset=dataset, model=model, train=tc)


@pytest.mark.parametrize("backend,loader", [("reference", "device"), ("reference", "streaming"),
                                            ("torchrec", "auto")])
def test_training_learns_what_only_the_bag_carries(tmp_path, backend, loader):
    if backend == "torchrec":
        pytest.importorskip("torchrec")
    dataset, data = planted_csv_dataset(tmp_path)
    cfg = run_cfg(dataset, tmp_path / "run", backend, loader)
    result = train(cfg, data)
    assert result["test"]["auc"] > 0.8, result["test"]
    params = read_log(tmp_path / "run" / "log.jsonl")[0]
    expected = "StreamingBatchLoader" if loader == "streaming" else "DeviceBatchLoader"
    assert params["loaders"] == {"train": expected, "valid": expected}

    model, _, schema = load_checkpoint(result["checkpoint"])
    assert [f["name"] for f in schema["multi_valued_fields"]] == ["tags"]
    test = data.split("test")
    p_device = predict_proba(model, test, 100, loader="device")
    np.testing.assert_allclose(predict_proba(model, test, 100, loader="streaming"), p_device, rtol=1e-6)
    assert result["test"]["n"] == len(p_device)


def test_cli_predict_scores_raw_rows_with_bags(tmp_path, capsys):
    from tf4ctr_fast.cli import main
    from tf4ctr_fast.train.metrics import auc

    dataset, data = planted_csv_dataset(tmp_path)
    result = train(run_cfg(dataset, tmp_path / "run", "reference", "auto"), data)
    assert main(["predict", "--checkpoint", result["out_dir"], "--input", str(tmp_path / "data.csv"),
                 "--output", str(tmp_path / "scores.csv")]) == 0
    scores = np.loadtxt(tmp_path / "scores.csv", delimiter=",", skiprows=1)
    labels = np.loadtxt(tmp_path / "data.csv", delimiter=",", skiprows=1, usecols=0)
    assert scores.shape == labels.shape == (3000,)
    assert auc(labels, scores) > 0.8            # the bags reached the model: blind to them it is ~0.5


def test_unknown_loader_names_the_key(tmp_path):
    dataset, data = planted_csv_dataset(tmp_path, rows=200)
    with pytest.raises(InputError, match="train.loader"):
        train(run_cfg(dataset, tmp_path / "run", "reference", "disk"), data)


def test_two_sharded_ranks_train_on_bags(tmp_path):     # train.device "cpu": gloo ranks on any machine
    pytest.importorskip("torchrec")
    dataset, data = planted_csv_dataset(tmp_path)
    cfg = run_cfg(dataset, tmp_path / "run", "torchrec", "auto")
    cfg.train.nproc, cfg.train.epochs = 2, 3
    result = train(cfg, data)
    assert result["test"]["auc"] > 0.8, result["test"]
    model, _, _ = load_checkpoint(result["checkpoint"])
    p = predict_proba(model, data.split("valid"), 256)
    assert abs(float(np.mean(p)) - float(np.mean(data.split("valid").labels))) < 0.1
