"""train.init_order "fuxictr": the initial weights drawn in FuxiCTR's order. The reference here is
FuxiCTR's DNN construction written out with torch's own modules (nn.Embedding and nn.Linear draw
their default inits as they are built), then FuxiCTR's inits; scripts/check_fuxictr_init.py compares
against the FuxiCTR package itself."""
import pytest
import torch
from torch import nn

from tf4ctr_fast.errors import InputError
from tf4ctr_fast.layers.init import draw_in_fuxictr_order_
from tf4ctr_fast.models.registry import build_model
from tf4ctr_fast.train.trainer import seed_everything, train

from test_model_zoo import DIM, tiny_config
from test_trainer import make_cfg, planted_data

VOCAB, HIDDEN = [7, 12, 5], [8, 6]


def fuxictr_dnn_weights(seed: int) -> list[torch.Tensor]:
    # FuxiCTR 2.3: FeatureEmbeddingDict builds each nn.Embedding(padding_idx=0) and inits rows 1: with
    # N(0, 1e-4); MLP_Block builds its Linear layers; BaseModel.reset_parameters then gives every
    # Linear xavier-normal weights and zero biases and calls init_weights (N(0, 1e-4)) again.
    seed_everything(seed)
    tables = [nn.Embedding(v, DIM, padding_idx=0) for v in VOCAB]
    for t in tables:
        nn.init.normal_(t.weight.data[1:], std=1e-4)
    widths = [DIM * len(VOCAB), *HIDDEN, 1]
    linears = [nn.Linear(a, b) for a, b in zip(widths, widths[1:])]
    for lin in linears:
        nn.init.xavier_normal_(lin.weight)
        lin.bias.data.fill_(0)
    for t in tables:
        nn.init.normal_(t.weight.data[1:], std=1e-4)
    weights = [t.weight.detach() for t in tables]
    for lin in linears:
        weights += [lin.weight.detach(), lin.bias.detach()]
    return weights


def dnn(seed: int) -> nn.Module:
    seed_everything(seed)
    return build_model(tiny_config("DNN", params={"dnn_hidden": HIDDEN}), VOCAB)


def test_fuxictr_order_reproduces_fuxictrs_dnn_weights_and_generator_state():
    model = dnn(2024)
    params = [p for m in model.modules() if isinstance(m, (nn.Embedding, nn.Linear))   # BatchNorm: no draws
              for p in m.parameters(recurse=False)]
    project = params[0].detach().clone()
    seed_everything(2024)
    draw_in_fuxictr_order_(model)
    after = torch.get_rng_state()
    expected = fuxictr_dnn_weights(2024)
    assert [tuple(p.shape) for p in params] == [tuple(w.shape) for w in expected]
    for got, want in zip(params, expected):
        assert torch.equal(got, want)
    assert torch.equal(after, torch.get_rng_state())   # fuxictr_dnn_weights ran last: same state
    # the project's order draws the same distributions into other places
    assert not torch.equal(project, expected[0])


def test_train_draws_in_fuxictr_order_and_checks_the_key(tmp_path):
    data, _ = planted_data(rows=(512, 200, 100))
    vocab = list(data.vocab_sizes)

    def start_weights(name, **keys):
        cfg = make_cfg(tmp_path / name, epochs=1, lr=1e-12, min_lr=0.0, seed=7, **keys)
        cfg.model = tiny_config("DNN", params={"dnn_hidden": HIDDEN})
        train(cfg, data)
        return torch.load(tmp_path / name / "best.pt", weights_only=False)["model_state"]

    fuxictr, project = start_weights("f", init_order="fuxictr"), start_weights("p")
    seed_everything(7)
    expected = build_model(tiny_config("DNN", params={"dnn_hidden": HIDDEN}), vocab)
    seed_everything(7)
    draw_in_fuxictr_order_(expected)
    key = "mlp.layers.0.weight"
    torch.testing.assert_close(fuxictr[key], expected.state_dict()[key], rtol=0, atol=1e-9)  # lr 1e-12: one tiny step
    assert (fuxictr[key] - project[key]).abs().max() > 1e-3

    for value, name, backend, words in (("numpy", "DNN", "reference", "is not one of project, fuxictr"),
                                        ("fuxictr", "DNN", "torchrec", "got 'DNN' on 'torchrec'"),
                                        ("fuxictr", "DLF", "reference", "got 'DLF' on 'reference'")):
        cfg = make_cfg(tmp_path / value, init_order=value)
        cfg.model = tiny_config(name, backend=backend)
        with pytest.raises(InputError, match="train.init_order") as e:
            train(cfg, data)
        assert words in str(e.value)
