import pytest

from tf4ctr_fast.config import RunConfig, load_config
from tf4ctr_fast.errors import InputError
from tf4ctr_fast.models import resolve_params


def test_defaults_are_the_embedded_demo():
    cfg = load_config()
    assert isinstance(cfg, RunConfig)
    params = resolve_params(cfg.model)
    assert (cfg.dataset.format, cfg.model.name, params.ssem, params.dfm) == ("synthetic", "TF4CTR", "SER", "WSF")


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  alpha: 0.5\n  mlp_s_hidden: [32]\ntrain:\n  lr: 0.01\n")
    cfg = load_config(path, ["train.lr=0.002", "model.gamma=3", "dataset.synthetic.rows=1000"])
    params = cfg.model.params        # the resolved config: every parameter of the model under params
    assert params["alpha"] == 0.5 and params["mlp_s_hidden"] == [32] and params["c"] == 0.9
    assert cfg.train.lr == 0.002 and params["gamma"] == 3.0 and cfg.dataset.synthetic.rows == 1000
    assert cfg.model.alpha is None and resolve_params(cfg.model).alpha == 0.5


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


def test_engine_keys_defaults_and_overrides():
    cfg = load_config()
    assert cfg.model.backend == "auto"     # torchrec where at parity, else reference (test_train_engine.py)
    assert (cfg.train.sparse_optimizer, cfg.train.sparse_lr, cfg.train.nproc, cfg.train.sharding) == \
        ("auto", None, 1, "table_wise")       # resolved per device by the trainer (test_train_engine.py)
    cfg = load_config(None, ["model.backend=torchrec", "train.sparse_optimizer=sgd", "train.sparse_lr=0.05",
                             "train.sparse_eps=1e-6", "train.nproc=2", "train.sharding=column_wise"])
    assert (cfg.model.backend, cfg.train.sparse_optimizer, cfg.train.sparse_lr, cfg.train.sparse_eps,
            cfg.train.nproc, cfg.train.sharding) == ("torchrec", "sgd", 0.05, 1e-6, 2, "column_wise")


@pytest.mark.parametrize("override, fragment", [
    ("train.nproc=two", "'train.nproc': expected an integer"),
    ("train.sparse_lr=fast", "'train.sparse_lr': expected a number"),
    ("model.backend=1", "'model.backend': expected a string"),
])
def test_engine_keys_are_typed(override, fragment):
    with pytest.raises(InputError, match=fragment):
        load_config(None, [override])


def test_exponent_without_a_dot_is_a_number(tmp_path):
    # YAML 1.1 (PyYAML) reads 1e-6 as a string; float keys accept it, other keys keep it as text
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  min_lr: 1e-6\n")
    cfg = load_config(path, ["train.sparse_eps=1E-7", "train.lr=+5e-4"])
    assert (cfg.train.min_lr, cfg.train.sparse_eps, cfg.train.lr) == (1e-6, 1e-7, 5e-4)
    assert load_config(None, ["train.device=1e-6"]).train.device == "1e-6"
    with pytest.raises(InputError, match="'train.lr': expected a number"):
        load_config(None, ["train.lr=1e-"])


def test_model_params_are_typed_and_checked_against_the_model(tmp_path):
    cfg = load_config(None, ["model.name=DCNv2", "model.params.num_cross_layers=2",
                             "model.params.model_structure=stacked"])
    params = resolve_params(cfg.model)
    assert (params.num_cross_layers, params.model_structure, params.low_rank) == (2, "stacked", 32)
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  name: AutoInt\n  params:\n    attention_layer: 3\n")
    with pytest.raises(InputError, match=r"bad\.yaml: config key 'model\.params\.attention_layer' is unknown"):
        load_config(path)
    with pytest.raises(InputError, match=r"'model\.params\.num_heads': expected an integer"):
        load_config(None, ["model.name=AutoInt", "model.params.num_heads=two"])
    with pytest.raises(InputError, match=r"'model\.params\.bridge_type': must be one of"):
        load_config(None, ["model.name=EDCN", "model.params.bridge_type=sum"])


def test_legacy_model_keys_map_into_params():
    """configs/*.yaml keep TF4CTR's keys at model level: they fill model.params of any model with a
    parameter of that name, the other models ignore them (as before the model zoo)."""
    cfg = load_config("configs/frappe.yaml")
    params = resolve_params(cfg.model)
    assert (params.alpha, params.c, params.mlp_s_hidden, params.ssem) == (0.25, 0.7, [400, 400], "SER")
    dnn = load_config("configs/frappe.yaml", ["model.name=DNN", "model.dnn_hidden=[32]"])
    assert resolve_params(dnn.model).dnn_hidden == [32]
    with pytest.raises(InputError, match=r"'model\.alpha' and 'model\.params\.alpha' are both set"):
        load_config(None, ["model.alpha=0.3", "model.params.alpha=0.4"])
    with pytest.raises(InputError, match=r"'model\.alpha': must be in \[0, 1\]"):
        load_config(None, ["model.alpha=3"])
