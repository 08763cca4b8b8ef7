"""The plug-in presets and the loss registry from the command line, on a small synthetic demo set:
`tf4ctr-fast train model.name=TF4CTR-DeepFM model.loss=focal train.epochs=1` and friends."""
import json
import warnings

import pytest

warnings.filterwarnings("ignore", message=".*is_fx_tracing.*")

from tf4ctr_fast.cli import main  # noqa: E402

DEMO = ["dataset.synthetic.rows=1500", "dataset.synthetic.num_int_fields=2", "dataset.synthetic.num_cat_fields=4",
        "dataset.synthetic.cat_vocab=40", "dataset.synthetic.int_vocab=8", "model.embedding_dim=4",
        "model.mlp_s_hidden=[8]", "model.mlp_c_hidden=[8]", "train.batch_size=256", "train.eval_batch_size=1024",
        "train.epochs=1", "train.progress=false"]


@pytest.mark.parametrize("overrides", [
    ["model.name=TF4CTR-DeepFM", "model.loss=focal"],
    ["model.name=TF4CTR-WideDeep", "model.backend=torchrec"],
    ["model.name=TF4CTR-xDeepFM", "model.params.simple_encoder={name: CIN, cin_hidden_units: [4, 4]}"],
    ["model.name=TF4CTR", "model.params.simple_encoder={name: FM}", "model.params.dfm=MoEF"],
    ["model.name=DeepFM", "model.loss=rce", "model.loss_params={alpha: 0.3}", "model.params.hidden_units=[8]"],
], ids=["deepfm-focal", "widedeep-torchrec", "xdeepfm-cin", "tf4ctr-fm-moef", "deepfm-rce"])
def test_train_a_preset_or_loss(tmp_path, overrides):
    args = [f"dataset.prepared_dir={tmp_path / 'data'}", f"train.out_dir={tmp_path / 'run'}", *DEMO, *overrides]
    assert main(["train", *args]) == 0
    result = json.loads((tmp_path / "run" / "results.json").read_text())
    assert 0.0 <= result["test"]["auc"] <= 1.0
    first = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    loss = next((o.split("=", 1)[1] for o in overrides if o.startswith("model.loss=")), None)
    default = "twin_focus" if first["config"]["model"]["name"].startswith("TF4CTR") else "bce"
    assert first["config"]["model"]["loss"] == (loss or default)   # the resolved loss is recorded


def test_the_default_run_folder_names_a_set_loss():
    from tf4ctr_fast.config import RunConfig, load_config

    cfg = RunConfig()
    cfg.model.name = "DeepFM"
    cfg.model.backend = "reference"
    assert cfg.resolved_out_dir().name == "synthetic_criteo_DeepFM_reference_fused_seed2023"
    cfg.model.loss = "bce"       # its own loss, as load_config records it
    assert cfg.resolved_out_dir().name == "synthetic_criteo_DeepFM_reference_fused_seed2023"
    cfg.model.loss = "focal"
    assert cfg.resolved_out_dir().name == "synthetic_criteo_DeepFM_reference_fused_focal_seed2023"
    loaded = load_config(None, ["model.name=TF4CTR-DeepFM"])
    assert loaded.model.loss == "twin_focus"
    # backend "auto" is named as resolved: TF4CTR-DeepFM on the CPU trains on torchrec
    assert loaded.resolved_out_dir().name == "synthetic_criteo_TF4CTR-DeepFM_torchrec_fused_seed2023"


def test_a_bad_loss_exits_2_naming_the_key(tmp_path, capsys):
    args = [f"dataset.prepared_dir={tmp_path / 'data'}", f"train.out_dir={tmp_path / 'run'}", *DEMO,
            "model.name=TF4CTR-DeepFM", "model.loss=focal", "model.loss_params={gamma: -1}"]
    assert main(["train", *args]) == 2
    assert "'model.loss_params.gamma': must be >= 0" in capsys.readouterr().err
