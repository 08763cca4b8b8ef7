"""`tf4ctr-fast export` and `predict --model` (tf4ctr_fast/export.py, docs/serving.md): the exported
program and the AOTInductor package give the eager model's probabilities (every registry model, both
backends, with and without multi-valued fields), ids out of a table score as OOV, the exported
vocabularies encode raw values exactly as prepare does, predict --model equals predict --checkpoint,
and the artifact runs in a process that cannot import tf4ctr_fast.

AOTInductor compiles C++ (a minute per model on a busy 2-core CPU): TF4CTR (through the CLI), DeepFM
and DCNv2 are compiled here; every other model's compile runs with TF4CTR_FAST_AOTI_ALL=1:
    TF4CTR_FAST_AOTI_ALL=1 python -m pytest -q tests/test_export.py -k every_model"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

warnings.filterwarnings("ignore", message=".*is_fx_tracing.*")

from tf4ctr_fast.cli import main  # noqa: E402
from tf4ctr_fast.config import RunConfig  # noqa: E402
from tf4ctr_fast.data.columns import load_prepared  # noqa: E402
from tf4ctr_fast.data.predict_input import PREDICT_SPLIT, encode_for_predict_text  # noqa: E402
from tf4ctr_fast.errors import InputError  # noqa: E402
from tf4ctr_fast.export import (compile_aoti, export_checkpoint, export_program,  # noqa: E402
                                schema_without_vocabularies, serving_model_from, write_vocabularies)
from tf4ctr_fast.train.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint  # noqa: E402

from test_model_zoo import BAGS, MODELS, NAMES, VOCAB, batch, build, tiny_config  # noqa: E402
from test_predict_text import criteo_files, criteo_run, csv_files, read_scores  # noqa: E402,F401

TOL = 1e-6   # fp32 probabilities: exported / compiled vs eager


def schema_of(bags) -> dict:
    return {"fields": [{"name": n, "vocab_size": v} for n, v in zip(NAMES, VOCAB)],
            "multi_valued_fields": [{"name": b.name, "vocab_size": b.vocab_size, "pooling": b.pooling} for b in bags]}


def trained_like(name: str, backend: str = "reference", bags=BAGS):
    """A tiny model in eval mode with weights moved off their initial values (zero-initialised heads
    would give 0.5 everywhere), and its run config."""
    torch.manual_seed(0)
    model = build(name, backend=backend, bags=bags, fused=False)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model.eval(), RunConfig(model=tiny_config(name, backend=backend))


def flat_inputs(x) -> tuple:
    """A batch as the exported program takes it: ids, then values and offsets per multi-valued field."""
    if isinstance(x, torch.Tensor):
        return (x,)
    return (x.ids, *[t for b in BAGS for t in x.bags[b.name]])


def eager_probabilities(model, x) -> torch.Tensor:
    with torch.no_grad():   # (not inference_mode: the fused TBE forward fails under it on CPU)
        return torch.sigmoid(model(x)["logit"])


def first_rows(x, n: int):
    from tf4ctr_fast.features import rows_of
    return rows_of(x, 0, n)


@pytest.mark.parametrize("backend", ["reference", "torchrec"])
@pytest.mark.parametrize("name", MODELS)
def test_exported_program_equals_the_eager_model(name, backend):
    model, cfg = trained_like(name, backend)
    serving = serving_model_from(model, cfg, schema_of(BAGS))
    program = export_program(serving, len(VOCAB), BAGS).module()
    x, _ = batch(2, with_bags=True, n=33)
    want = eager_probabilities(model, x)
    assert want.std() > 1e-3                         # not a constant: the test can fail
    for n in (33, 1, 2):                              # the batch dimension is dynamic, 1 included
        got = program(*flat_inputs(first_rows(x, n)))
        assert got.dtype == torch.float32 and got.shape == (n,)
        # against the eager model on the same rows: a batch of another size may take other matmul
        # blockings, and a deep model (DLF) then differs from its own batch-33 output by ~2e-6
        torch.testing.assert_close(got, eager_probabilities(model, first_rows(x, n)), rtol=0, atol=TOL)


@pytest.mark.parametrize("name", ["DeepFM", "TF4CTR"])
def test_models_without_multi_valued_fields_take_ids_alone(name):
    model, cfg = trained_like(name, bags=())
    program = export_program(serving_model_from(model, cfg, schema_of(())), len(VOCAB), ()).module()
    x, _ = batch(3, n=9)
    torch.testing.assert_close(program(x), eager_probabilities(model, x), rtol=0, atol=TOL)


def test_out_of_range_ids_score_as_oov_never_as_another_row():
    model, cfg = trained_like("DeepFM")
    program = export_program(serving_model_from(model, cfg, schema_of(BAGS)), len(VOCAB), BAGS).module()
    x, _ = batch(4, with_bags=True, n=6)
    ids, (values, offsets) = x.ids.clone(), x.bags["tags"]
    bad, oov = ids.clone(), ids.clone()
    bad[0, 0], bad[1, 1], bad[2, 2] = -1, VOCAB[1], 10 ** 15       # one past the table, far past, negative
    oov[0, 0], oov[1, 1], oov[2, 2] = 1, 1, 1
    bad_values, oov_values = values.clone(), values.clone()
    bad_values[0], oov_values[0] = BAGS[0].vocab_size + 3, 1
    want = program(oov, oov_values, offsets)
    torch.testing.assert_close(program(bad, bad_values, offsets), want, rtol=0, atol=0)
    # and the OOV row is what the eager model gives for id 1 (not, say, padding's zero row)
    from tf4ctr_fast.features import Features
    torch.testing.assert_close(want, eager_probabilities(model, Features(oov, {"tags": (oov_values, offsets)})),
                               rtol=0, atol=TOL)


def aoti_equals_eager(name: str, tmp_path: Path, tuned: bool = False) -> None:
    import torch._inductor

    model, cfg = trained_like(name)
    program = export_program(serving_model_from(model, cfg, schema_of(BAGS)), len(VOCAB), BAGS)
    runner = torch._inductor.aoti_load_package(str(compile_aoti(program, tmp_path / "model_aoti.pt2", tuned)))
    x, _ = batch(5, with_bags=True, n=20)
    want = eager_probabilities(model, x)
    for n in (20, 1):
        inputs = flat_inputs(first_rows(x, n))
        torch.testing.assert_close(runner(*inputs), want[:n], rtol=0, atol=TOL)
        # the runner called directly (docs/serving.md's low-latency call): the same program
        torch.testing.assert_close(runner.loader.run(list(inputs))[0], want[:n], rtol=0, atol=TOL)


@pytest.mark.parametrize("name, tuned", [("DeepFM", False), ("DCNv2", True)])
def test_aoti_package_equals_the_eager_model(name, tuned, tmp_path):
    aoti_equals_eager(name, tmp_path, tuned)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TF4CTR_FAST_AOTI_ALL"),
                    reason="a C++ compile per model (~1 min each on 2 cores); set TF4CTR_FAST_AOTI_ALL=1 to run")
@pytest.mark.parametrize("name", [n for n in MODELS if n not in ("DeepFM", "DCNv2")])
def test_aoti_package_equals_the_eager_model_every_model(name, tmp_path):
    aoti_equals_eager(name, tmp_path)


def test_torchrec_checkpoint_exports_as_plain_tables(tmp_path):
    model, cfg = trained_like("TF4CTR", "torchrec", bags=())
    save_checkpoint(tmp_path / "best.pt", model, cfg, schema_of(()), epoch=1, metrics={})
    out = export_checkpoint(tmp_path, tmp_path / "export", aoti=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["trained_backend"] == "torchrec" and manifest["files"]["aoti_package"] is None
    program = torch.export.load(str(out / "model.pt2")).module()
    assert not any("ebc" in key for key in program.state_dict())            # nn.Embedding tables, no TorchRec
    x, _ = batch(6, n=12)
    torch.testing.assert_close(program(x), eager_probabilities(model, x), rtol=0, atol=TOL)


# ------------------------------------------------------------------------------------------------
# the encoder: vocabularies as sorted keys


def exported_vocabularies(schema: dict, tmp_path: Path):
    (tmp_path / "vocab").mkdir()
    write_vocabularies(tmp_path / "vocab", schema, "test")
    return np.load(tmp_path / "vocab" / "vocab_keys.npy"), np.load(tmp_path / "vocab" / "vocab_offsets.npy")


@pytest.mark.parametrize("fixture", ["criteo_files", "csv_files"])
def test_exported_vocabularies_encode_files_exactly_as_prepare(fixture, request, tmp_path):
    from tf4ctr_fast.data.columns import IntVocab

    folder, ds = request.getfixturevalue(fixture)
    keys, offsets = exported_vocabularies(ds.schema, tmp_path)
    vocabs = [IntVocab(keys[offsets[j]:offsets[j + 1]]) for j in range(len(offsets) - 1)]
    suffix = "tsv" if fixture == "criteo_files" else "csv"
    for split in ("train", "valid"):
        out = encode_for_predict_text(folder / f"{split}.{suffix}", schema_without_vocabularies(ds.schema),
                                      tmp_path / f"enc_{split}", progress=False, vocabs=vocabs)
        got, want = load_prepared(out).split(PREDICT_SPLIT), ds.split(split)
        np.testing.assert_array_equal(got.ids, want.ids)
        for name, (values, offs) in want.multi_valued.items():
            np.testing.assert_array_equal(got.multi_valued[name][0], values)
            np.testing.assert_array_equal(got.multi_valued[name][1], offs)


def test_a_client_encodes_criteo_hashes_with_searchsorted_alone(criteo_files, tmp_path):
    """docs/serving.md's recipe, written here independently: a hex token's key is (digits << 56) |
    value, its id 2 + its rank among the field's keys when present, else OOV; "" (missing) has key 0."""
    folder, ds = criteo_files
    keys, offsets = exported_vocabularies(ds.schema, tmp_path)
    rows = [line.split("\t") for line in (folder / "train.tsv").read_text().splitlines()]
    want = ds.split("train").ids
    for j in range(13, 39):                     # C1..C26
        field_keys = keys[offsets[j]:offsets[j + 1]]
        tokens = [row[j + 1] if j + 1 < len(row) else "" for row in rows]
        token_keys = np.array([(len(t) << 56) | int(t, 16) if t else 0 for t in tokens], dtype=np.int64)
        rank = np.searchsorted(field_keys, token_keys)
        hit = (rank < len(field_keys)) & (field_keys[np.minimum(rank, len(field_keys) - 1)] == token_keys)
        np.testing.assert_array_equal(np.where(hit, rank + 2, 1), want[:, j])
    assert (want[:, 13:] == 1).any() and (want[:, 13:] > 1).any()


# ------------------------------------------------------------------------------------------------
# the CLI end to end: a TF4CTR trained on Criteo-shaped files (test_predict_text's run)


@pytest.fixture(scope="module")
def exported(criteo_run):
    out = criteo_run / "export"
    assert main(["export", "--checkpoint", str(criteo_run / "run"), "--output", str(out)]) == 0
    return criteo_run, out


def test_export_folder_holds_program_package_vocabularies_and_manifest(exported):
    run, out = exported
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", "model.pt2", "model_aoti.pt2", "vocab_keys.npy", "vocab_offsets.npy"])
    manifest = json.loads((out / "manifest.json").read_text())
    schema = load_prepared(run / "prepared").schema
    assert manifest["fingerprint"] == schema["fingerprint"]
    assert [f["name"] for f in manifest["fields"]] == manifest["inputs"][0]["columns"] == [
        f["name"] for f in schema["fields"]]
    assert manifest["versions"]["torch"] == torch.__version__
    assert all("vocab" not in f for f in manifest["schema"]["fields"])         # the keys are binary
    offsets = np.load(out / "vocab_offsets.npy")
    assert [f["num_known"] for f in manifest["fields"]] == np.diff(offsets).tolist()
    assert [f["vocab_size"] for f in manifest["fields"]] == [n + 2 for n in np.diff(offsets).tolist()]
    assert manifest["aoti_inductor_options"] == {}


def test_exported_aoti_package_equals_the_program(exported):
    import torch._inductor

    _, out = exported
    program = torch.export.load(str(out / "model.pt2")).module()
    runner = torch._inductor.aoti_load_package(str(out / "model_aoti.pt2"))
    manifest = json.loads((out / "manifest.json").read_text())
    vocab_sizes = torch.tensor([f["vocab_size"] for f in manifest["fields"]])
    ids = (torch.rand(33, len(vocab_sizes), generator=torch.Generator().manual_seed(0)) * vocab_sizes).long()
    with torch.no_grad():
        want = program(ids)
        for n in (33, 1):
            torch.testing.assert_close(runner(ids[:n]), want[:n], rtol=0, atol=TOL)


def test_predict_model_equals_predict_checkpoint(exported, tmp_path, capsys):
    run, out = exported
    common = ["--input", str(run / "valid.tsv"), "--quiet"]
    assert main(["predict", "--checkpoint", str(run / "run"), "--output", str(tmp_path / "ckpt.csv"), *common]) == 0
    assert main(["predict", "--model", str(out), "--output", str(tmp_path / "export.csv"), "--batch-size", "7",
                 *common]) == 0
    got, want = read_scores(tmp_path / "export.csv"), read_scores(tmp_path / "ckpt.csv")
    assert len(got) == 150
    np.testing.assert_allclose(got, want, rtol=0, atol=1.01e-6)   # both printed with 6 decimals


def test_predict_takes_exactly_one_of_model_and_checkpoint(exported, tmp_path, capsys):
    run, out = exported
    args = ["predict", "--input", str(run / "valid.tsv"), "--output", str(tmp_path / "s.csv")]
    for extra in (["--model", str(out), "--checkpoint", str(run / "run")], []):
        with pytest.raises(SystemExit) as e:
            main(args + extra)
        assert e.value.code == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(args + ["--model", str(run / "run")]) == 2                 # a run folder is not an export
    assert "not an export folder" in capsys.readouterr().err


def test_export_replaces_only_an_export_folder(exported, tmp_path, capsys):
    run, _ = exported
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    assert main(["export", "--checkpoint", str(run / "run"), "--output", str(tmp_path / "notes"), "--no-aoti"]) == 2
    assert "not an export folder" in capsys.readouterr().err
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"
    with pytest.raises(InputError):
        export_checkpoint(run / "nothing_here", tmp_path / "e", aoti=False)


_STANDALONE = """
import sys, importlib.abc
class NoTf4ctr(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tf4ctr_fast":
            raise ImportError("the artifact must run without tf4ctr_fast")
sys.meta_path.insert(0, NoTf4ctr())
import numpy as np, torch, torch._inductor
folder, ids = sys.argv[1], torch.from_numpy(np.load(sys.argv[2]))
program = torch.export.load(folder + "/model.pt2").module()
package = torch._inductor.aoti_load_package(folder + "/model_aoti.pt2")
with torch.no_grad():
    out = [program(ids), program(ids[:1]), package(ids), package(ids[:1])]
np.save(sys.argv[3], torch.cat(out).numpy())
assert not any(m.split(".")[0] == "tf4ctr_fast" for m in sys.modules)
"""


def test_artifact_runs_with_torch_alone_and_equals_eager(exported, tmp_path):
    run, out = exported
    ids = np.asarray(load_prepared(run / "prepared").split("valid").ids[:40], dtype=np.int64)
    np.save(tmp_path / "ids.npy", ids)
    subprocess.run([sys.executable, "-c", _STANDALONE, str(out), str(tmp_path / "ids.npy"), str(tmp_path / "p.npy")],
                   check=True, cwd=tmp_path)
    model, _, _ = load_checkpoint(resolve_checkpoint(run / "run"))     # the trained model, its own head
    want = eager_probabilities(model, torch.from_numpy(ids)).numpy()
    got = np.load(tmp_path / "p.npy")
    for part, expected in zip(np.split(got, [40, 41, 81]), (want, want[:1], want, want[:1])):
        np.testing.assert_allclose(part, expected, rtol=0, atol=TOL)
    assert want.std() > 1e-4


def test_csv_ids_run_with_keep_columns_predicts_the_same_from_its_export(tmp_path, capsys):
    """The integer-id CSV reader (no codec: the raw integers are the keys) and keep columns."""
    from test_cli import TINY_MODEL, write_ids_csv, write_planted_run

    config = write_planted_run(tmp_path)
    assert main(["train", "--config", str(config), *TINY_MODEL, "train.epochs=1", "model.backend=torchrec"]) == 0
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--output", str(tmp_path / "export"),
                 "--no-aoti"]) == 0
    new = tmp_path / "new.csv"
    write_ids_csv(new, [[0, 100, 1], [999, 100, 0], [3, 129, 2], [3, -5, 7]], header=("user", "item", "ctx"))
    for source, out in (("--checkpoint", "run"), ("--model", "export")):
        assert main(["predict", source, str(tmp_path / out), "--input", str(new),
                     "--output", str(tmp_path / f"{out}.csv")]) == 0
    got, want = (list(csv.reader(open(tmp_path / f"{n}.csv"))) for n in ("export", "run"))
    assert got[0] == want[0] == ["user", "item", "score"]
    assert [r[:2] for r in got] == [r[:2] for r in want]
    np.testing.assert_allclose([float(r[2]) for r in got[1:]], [float(r[2]) for r in want[1:]], rtol=0, atol=1.01e-6)
    assert len({r[2] for r in got[1:]}) > 1


def test_exported_model_scores_a_split_with_bags_in_batches(tmp_path):
    """predict --model's batching: each batch's slice of the bags, offsets rebased (batch 5 of 33 rows)."""
    from types import SimpleNamespace

    from tf4ctr_fast.export import ExportedModel

    model, cfg = trained_like("DCNv2")
    save_checkpoint(tmp_path / "best.pt", model, cfg, schema_of(BAGS), epoch=3, metrics={})
    out = export_checkpoint(tmp_path / "best.pt", tmp_path / "export", aoti=False)
    x, _ = batch(7, with_bags=True, n=33)
    values, offsets = x.bags["tags"]
    split = SimpleNamespace(ids=x.ids.numpy().astype(np.int32),
                            multi_valued={"tags": (values.numpy().astype(np.int32), offsets.numpy())})
    exported = ExportedModel(out)
    assert exported.manifest["model"]["epoch"] == 3
    assert [i["name"] for i in exported.manifest["inputs"]] == ["ids", "tags.values", "tags.offsets"]
    np.testing.assert_allclose(exported.predict(split, 5), eager_probabilities(model, x).numpy(), rtol=0, atol=TOL)
