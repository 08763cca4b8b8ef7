import pytest

from tf4ctr_fast.config import RunConfig, load_config
from tf4ctr_fast.errors import InputError


def test_defaults_are_the_embedded_demo():
    cfg = load_config()
    assert isinstance(cfg, RunConfig)
    assert (cfg.dataset.format, cfg.model.name, cfg.model.ssem, cfg.model.dfm) == ("synthetic", "TF4CTR", "SER", "WSF")


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  alpha: 0.5\n  mlp_s_hidden: [32]\ntrain:\n  lr: 0.01\n")
    cfg = load_config(path, ["train.lr=0.002", "model.gamma=3", "dataset.synthetic.rows=1000"])
    assert cfg.model.alpha == 0.5 and cfg.model.mlp_s_hidden == [32]
    assert cfg.train.lr == 0.002 and cfg.model.gamma == 3.0 and cfg.dataset.synthetic.rows == 1000


@pytest.mark.parametrize("text, key", [
    ("model:\n  alfa: 0.5\n", "model.alfa"),
    ("trian:\n  lr: 1\n", "trian"),
    ("dataset:\n  synthetic:\n    rowz: 3\n", "dataset.synthetic.rowz"),
])
def test_unknown_key_is_named_with_the_file(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as e:
        load_config(path)
    assert f"'{key}'" in str(e.value) and "bad.yaml" in str(e.value)


@pytest.mark.parametrize("override, fragment", [
    ("train.batch_size=abc", "'train.batch_size': expected an integer"),
    ("model.batch_norm=3", "'model.batch_norm': expected true/false"),
    ("model.mlp_s_hidden=5", "'model.mlp_s_hidden': expected a list"),
    ("train.lr", "expected key=value"),
    ("model.nope=1", "'model.nope' is unknown"),
])
def test_bad_override_names_the_key(override, fragment):
    with pytest.raises(InputError, match=fragment.replace("(", r"\(")):
        load_config(None, [override])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(InputError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
