"""The loss registry (tf4ctr_fast.losses, config model.loss): each loss against a formula written here on
log-sigmoids (not the library's probability-space BCE), values and gradients; the config errors; every
model's default is its behaviour before the registry."""
import pytest
import torch
import torch.nn.functional as F

from tf4ctr_fast.config import ModelConfig
from tf4ctr_fast.errors import InputError
from tf4ctr_fast.losses import BCELoss, FocalLoss, RCELoss, build_loss
from tf4ctr_fast.models import build_model, model_class, model_names, resolved_model_config
from tf4ctr_fast.reference.loss import logloss

TOL = dict(rtol=1e-10, atol=1e-12)   # float64, |z| <= 6: the library's clamped log is exact here


def batch(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = (torch.rand(n, generator=gen, dtype=torch.float64) * 12 - 6).requires_grad_()
    y = torch.randint(0, 2, (n,), generator=gen).to(torch.float64)
    return z, y


def bce_of_logit(z, y):
    return -(y * F.logsigmoid(z) + (1 - y) * F.logsigmoid(-z))


def p_true(z, y):
    """Probability of the true label, from the logit's sign: σ(z) for positives, σ(-z) for negatives."""
    return torch.sigmoid(torch.where(y > 0.5, z, -z))


def focal_formula(z, y, alpha, gamma):
    alpha_t = torch.where(y > 0.5, torch.full_like(z, alpha), torch.full_like(z, 1 - alpha))
    return (alpha_t * bce_of_logit(z, y) * (1 - p_true(z, y)) ** gamma).mean()


def grad(loss, z):
    (g,) = torch.autograd.grad(loss, z)
    return g


def test_bce_is_the_log_loss():
    z, y = batch()
    got, want = BCELoss(BCELoss.Params())(z, y), bce_of_logit(z, y).mean()
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(grad(got, z), (torch.sigmoid(z) - y) / len(z), **TOL)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.6, 0.0), (0.5, 1.5)])
def test_focal_values_and_gradients(alpha, gamma):
    z, y = batch(seed=1)
    loss = build_loss("focal", {"alpha": alpha, "gamma": gamma})
    got, want = loss(z, y), focal_formula(z, y, alpha, gamma)
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(grad(got, z), grad(focal_formula(z, y, alpha, gamma), z), **TOL)


def test_focal_with_gamma_0_and_alpha_half_is_half_the_bce():
    z, y = batch(seed=2)
    torch.testing.assert_close(build_loss("focal", {"alpha": 0.5, "gamma": 0})(z, y),
                               0.5 * bce_of_logit(z, y).mean(), **TOL)


@pytest.mark.parametrize("alpha", [0.25, 0.0, 1.0])
def test_rce_values_and_detached_weight_gradient(alpha):
    z, y = batch(seed=3)
    got = build_loss("rce", {"alpha": alpha})(z, y)
    weight = p_true(z, y).detach() ** alpha
    torch.testing.assert_close(got, (weight * bce_of_logit(z, y)).mean(), **TOL)
    # The weight is a constant: the gradient is the weighted BCE gradient, w_i (σ(z_i) - y_i) / B.
    torch.testing.assert_close(grad(got, z), weight * (torch.sigmoid(z) - y) / len(z), **TOL)


def test_defaults_and_float32_bf16_inputs():
    assert (FocalLoss.Params().alpha, FocalLoss.Params().gamma, RCELoss.Params().alpha) == (0.25, 2.0, 0.25)
    z, y = batch(seed=4)
    for name in ("bce", "focal", "rce"):
        loss = build_loss(name)
        assert loss(z.detach().to(torch.bfloat16), y.float()).dtype == torch.float32, name


@pytest.mark.parametrize("loss,params,match", [
    ("hinge", {}, r"'model\.loss': must be one of bce, focal, rce, twin_focus.*'hinge'"),
    ("focal", {"beta": 1}, r"'model\.loss_params\.beta' is unknown for loss focal"),
    ("bce", {"alpha": 1}, r"'model\.loss_params\.alpha' is unknown for loss bce \(it has no parameters\)"),
    ("focal", {"alpha": 1.5}, r"'model\.loss_params\.alpha': must be in \[0, 1\] \(loss focal\)"),
    ("focal", {"gamma": -1.0}, r"'model\.loss_params\.gamma': must be >= 0"),
    ("rce", {"alpha": -0.1}, r"'model\.loss_params\.alpha': must be >= 0"),
    ("rce", {"alpha": "x"}, r"model\.loss_params\.alpha"),
])
def test_config_errors_name_the_key(loss, params, match):
    with pytest.raises(InputError, match=match):
        build_model(ModelConfig(name="DNN", loss=loss, loss_params=params), [5, 6])


def test_twin_focus_needs_a_twin_model():
    with pytest.raises(InputError, match=r"'model\.loss': twin_focus needs a twin model"):
        build_model(ModelConfig(name="DeepFM", loss="twin_focus"), [5, 6])


def test_every_model_defaults_to_its_previous_loss():
    for name in model_names():
        want = "twin_focus" if name.startswith("TF4CTR") else "bce"
        assert model_class(name).default_loss == want, name
        assert resolved_model_config(ModelConfig(name=name)).loss == want, name


def test_a_baseline_trains_on_the_configured_loss():
    torch.manual_seed(0)
    cfg = dict(name="DNN", embedding_dim=4, params={"dnn_hidden": [8]}, batch_norm=False, net_dropout=0.0)
    bce = build_model(ModelConfig(**cfg), [7, 9])
    focal = build_model(ModelConfig(**cfg, loss="focal", loss_params={"gamma": 1.0}), [7, 9])
    focal.load_state_dict(bce.state_dict())
    ids = torch.tensor([[1, 2], [3, 4], [5, 6], [6, 8]])
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])
    logit = bce(ids)["logit"].detach().double()
    torch.testing.assert_close(bce(ids, y)["loss"].double(), logloss(logit, y.double()), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(focal(ids, y)["loss"].double(), focal_formula(logit, y.double(), 0.25, 1.0),
                               rtol=1e-6, atol=1e-7)
