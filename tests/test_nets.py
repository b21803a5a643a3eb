"""Networks (SeqSleepNet, E2E-ARNN, multitask ARNN, DeepSleepNet) and the StagingModel wrapper."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from sleepstage_cli.model.nets import E2EARNN, NETS, DeepSleepNet, MultitaskARNN, SeqSleepNet, build_net
from sleepstage_cli.model.nets.blocks import PositionwiseLinear, TriangularFilterbank, lin_tri_filter_shape
from sleepstage_cli.model.staging import StagingModel
from sleepstage_cli.spectrograms.frontend import RunningStats

SPECTROGRAM_NETS = ["seqsleepnet", "e2e-arnn", "multitask-arnn"]
# DeepSleepNet at full width has ~25M parameters; training-style tests use a narrow one of the same layout.
SMALL_DSN = dict(first_filters=8, conv_filters=16, lstm_hidden=32)


def make_net(name: str, n_channels: int, seq_len: int, **extra) -> nn.Module:
    hp = dict(n_channels=n_channels, **extra)
    if name == "seqsleepnet":
        hp["seq_len"] = seq_len
    if name == "deepsleepnet":
        hp = {**SMALL_DSN, **hp}
    return build_net(name, **hp)


def net_input(name: str, b: int, l: int, c: int) -> torch.Tensor:
    return torch.randn(b, l, c, 3000) if name == "deepsleepnet" else torch.randn(b, l, c, 29, 129)


def expected_shape(name: str, b: int, l: int) -> tuple[int, ...]:
    return (b, l, 3, 5) if name == "multitask-arnn" else (b, l, 5)


# ----------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", SPECTROGRAM_NETS)
@pytest.mark.parametrize("c", [1, 2, 3])
def test_spectrogram_net_shapes(name, c):
    torch.manual_seed(0)
    for l in (1, 10, 20, 30):
        net = make_net(name, c, l).eval()
        with torch.no_grad():
            y = net(net_input(name, 2, l, c))
        assert y.shape == expected_shape(name, 2, l)
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("c", [1, 2, 3])
def test_deepsleepnet_shapes_full_size(c):
    torch.manual_seed(0)
    net = DeepSleepNet(n_channels=c).eval()
    assert net.out_features == 3072  # 128 x (16 + 8) with "SAME" padding, as the original at 100 Hz
    with torch.no_grad():
        for l in (1, 10, 20, 30):
            x = torch.randn(1, l, c, 3000)
            z = net.encode_epochs(x)
            assert z.shape == (1, l, 3072)
            assert net(x).shape == (1, l, 5)


def test_deepsleepnet_has_no_attention():
    net = make_net("deepsleepnet", 1, 2)
    with pytest.raises(ValueError, match="attention"):
        net(torch.randn(1, 2, 1, 3000), return_attention=True)


def test_seqsleepnet_per_position_needs_seq_len():
    net = SeqSleepNet(n_channels=1, seq_len=10).eval()
    with pytest.raises(ValueError, match="exactly 10 epochs"):
        net(torch.randn(1, 9, 1, 29, 129))
    shared = SeqSleepNet(n_channels=1, seq_len=10, output="shared").eval()
    with torch.no_grad():
        assert shared(torch.randn(1, 7, 1, 29, 129)).shape == (1, 7, 5)
    with pytest.raises(ValueError, match="per-position"):
        SeqSleepNet(output="per-epoch")


def test_per_position_output_layers_are_separate():
    torch.manual_seed(0)
    layer = PositionwiseLinear(4, 128, 5)
    z = torch.randn(3, 4, 128)
    want = torch.stack([nn.functional.linear(z[:, p], layer.weight[p], layer.bias[p]) for p in range(4)], dim=1)
    torch.testing.assert_close(layer(z), want)
    same = z[:, :1].expand(3, 4, 128)  # the same vector at every position gives four different outputs
    y = layer(same)
    assert not torch.allclose(y[:, 0], y[:, 1])
    per_position = sum(p.numel() for p in SeqSleepNet(seq_len=20).parameters())
    shared = sum(p.numel() for p in SeqSleepNet(seq_len=20, output="shared").parameters())
    assert per_position - shared == 19 * (128 * 5 + 5)


def test_wrong_channel_count_is_reported():
    with pytest.raises(ValueError, match=r"\(B, L, 3, frames, 129\)"):
        SeqSleepNet(n_channels=3)(torch.randn(1, 20, 2, 29, 129))


@pytest.mark.parametrize("rnn", ["gru", "lstm"])
def test_seqsleepnet_attention_and_split(rnn):
    torch.manual_seed(0)
    net = SeqSleepNet(n_channels=2, seq_len=5, rnn=rnn).eval()
    x = torch.randn(3, 5, 2, 29, 129)
    with torch.no_grad():
        logits, alpha = net(x, return_attention=True)
        z, alpha2 = net.encode_epochs(x, return_attention=True)
        split = net.classify_sequence(z)
        plain = net(x)
    assert alpha.shape == (3, 5, 29)
    assert (alpha >= 0).all()
    torch.testing.assert_close(alpha.sum(-1), torch.ones(3, 5))
    assert z.shape == (3, 5, 128)
    torch.testing.assert_close(split, logits, rtol=0, atol=0)
    torch.testing.assert_close(plain, logits, rtol=0, atol=0)
    torch.testing.assert_close(alpha2, alpha, rtol=0, atol=0)


@pytest.mark.parametrize("cls", [E2EARNN, MultitaskARNN])
def test_arnn_is_position_independent(cls):
    torch.manual_seed(0)
    net = cls(n_channels=3).eval()
    x = torch.randn(1, 6, 3, 29, 129)
    x[0, 4] = x[0, 1]
    with torch.no_grad():
        y = net(x)
        alone = net(x[:, 1:2])
    torch.testing.assert_close(y[0, 4], y[0, 1], rtol=0, atol=1e-6)
    torch.testing.assert_close(alone[0, 0], y[0, 1], rtol=0, atol=1e-6)
    assert not torch.allclose(y[0, 0], y[0, 1])


def test_multitask_arnn_output():
    torch.manual_seed(0)
    net = MultitaskARNN(n_channels=2).eval()
    with torch.no_grad():
        y, alpha = net(torch.randn(4, 7, 2, 29, 129), return_attention=True)
    assert y.shape == (4, 7, 3, 5)
    assert alpha.shape == (4, 7, 29)
    assert not torch.allclose(y[:, :, 0], y[:, :, 1])  # three distinct heads (previous, current, next)


def test_registry():
    assert set(NETS) == {"seqsleepnet", "e2e-arnn", "multitask-arnn", "deepsleepnet"}
    with pytest.raises(ValueError, match="seqsleepnet, e2e-arnn, multitask-arnn, deepsleepnet"):
        build_net("seqsleep")
    with pytest.raises(ValueError, match="seq_len"):
        build_net("e2e-arnn", seq_len=20)
    for name in NETS:
        net = make_net(name, 2, 3)
        rebuilt = build_net(name, **json.loads(json.dumps(net.hparams)))
        assert rebuilt.hparams == net.hparams
        assert net.input_kind == ("raw" if name == "deepsleepnet" else "spectrogram")


# ------------------------------------------------------------------------------------------- filterbank


def test_triangles_match_the_original_construction():
    tri = lin_tri_filter_shape(nfilt=32, nfft=256, samplerate=100, lowfreq=0, highfreq=50)
    assert tri.shape == (129, 32)
    # By hand: points at 50/33 Hz steps -> bins floor(257 * hz / 100) = 0, 3, 7, ...; filter 0 rises over
    # bins 0-2 (0, 1/3, 2/3), peaks at bin 3, falls over 4-6 (3/4, 1/2, 1/4) and is 0 from bin 7.
    np.testing.assert_allclose(tri[:8, 0], [0, 1 / 3, 2 / 3, 1, 0.75, 0.5, 0.25, 0])
    assert tri[128].sum() == 0  # the last edge (bin 128, 50 Hz) is excluded, as in the original
    assert np.all(tri.max(axis=0) == 1)


# -------------------------------------------------------------------------------------------- gradients


def random_loss(y: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (y * torch.randn(y.shape, generator=g)).sum()


@pytest.mark.parametrize("name", list(NETS))
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    net = make_net(name, 3, 4).train()
    random_loss(net(net_input(name, 2, 4, 3)), 1).backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", SPECTROGRAM_NETS)
def test_filterbank_stays_nonnegative_and_triangular(name):
    torch.manual_seed(0)
    net = make_net(name, 3, 4).train()
    fb = net.encoder.filterbank
    before = fb.effective_weight().detach().clone()
    opt = torch.optim.Adam(net.parameters(), lr=0.2)
    x = net_input(name, 2, 4, 3)
    for step in range(5):
        opt.zero_grad()
        random_loss(net(x), step).backward()
        opt.step()
    after = fb.effective_weight().detach()
    outside = (fb.triangles == 0).expand_as(after)
    assert not torch.allclose(after, before)  # the banks did learn
    assert (after >= 0).all()
    assert (after[outside] == 0).all()
    assert (after[~outside] > 0).all()
    assert (after <= fb.triangles).all()  # sigmoid gain <= 1


@pytest.mark.parametrize("name", [n for n in NETS if n != "deepsleepnet"])  # its own: test_training_protocol
def test_regularised_parameters(name):
    net = make_net(name, 3, 4)
    reg = {id(p) for p in net.regularised_parameters()}
    names = {id(p): n for n, p in net.named_parameters()}
    assert len(reg) == len(net.regularised_parameters())  # no duplicates
    norm_params = {id(p) for m in net.modules() if isinstance(m, nn.BatchNorm1d) for p in m.parameters()}
    filterbanks = {id(m.weight) for m in net.modules() if isinstance(m, TriangularFilterbank)}
    assert len(filterbanks) == 1
    for pid, pname in names.items():
        exempt = pid in filterbanks or pid in norm_params or pname.rsplit(".", 1)[-1].startswith("bias")
        assert (pid in reg) == (not exempt), pname
    # the weights that matter are in: recurrent, output, attention projection and vector
    assert any("weight_ih" in names[p] for p in reg)
    assert any(names[p].startswith("output.weight") for p in reg)
    if name != "deepsleepnet":
        assert id(net.encoder.attention.v) in reg


# ------------------------------------------------------------------------------------------ overfitting


@pytest.mark.parametrize("name", list(NETS))
def test_a_few_steps_reduce_the_loss(name):
    torch.manual_seed(0)
    net = make_net(name, 2, 3, dropout=0.0).train()
    x = net_input(name, 4, 3, 2)
    target = torch.randint(0, 5, expected_shape(name, 4, 3)[:-1])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)

    def loss() -> torch.Tensor:
        y = net(x)
        return nn.functional.cross_entropy(y.reshape(-1, 5), target.reshape(-1))

    first = loss().item()
    for _ in range(15):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.7 * first


# ------------------------------------------------------------------------------------------ StagingModel


@pytest.mark.parametrize("name", list(NETS))
def test_staging_model_round_trip(name):
    torch.manual_seed(0)
    extra = SMALL_DSN if name == "deepsleepnet" else {}
    model = StagingModel(name, n_channels=2, seq_len=4, **extra)
    if model.input_kind == "spectrogram":
        model.set_normalisation(torch.randn(2, 29, 129) * 10, torch.rand(2, 29, 129) * 5 + 1)
    config = json.loads(json.dumps(model.config()))
    assert config["net"] == name and config["n_channels"] == 2 and config["seq_len"] == 4

    torch.manual_seed(1)  # a different initialisation: everything must come from the state_dict
    rebuilt = StagingModel.from_config(config, model.state_dict())
    model.eval(), rebuilt.eval()
    x = torch.randn(2, 4, 2, 3000)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
        if model.has_attention:
            torch.testing.assert_close(
                rebuilt(x, return_attention=True)[1], model(x, return_attention=True)[1], rtol=0, atol=0
            )
    assert rebuilt.config() == config


@pytest.mark.parametrize("name", list(NETS))
def test_staging_model_forward_and_split(name):
    torch.manual_seed(0)
    extra = SMALL_DSN if name == "deepsleepnet" else {}
    model = StagingModel(name, n_channels=3, seq_len=5, **extra).eval()
    x = torch.randn(2, 5, 3, 3000)
    with torch.no_grad():
        y = model(x)
        split = model.classify_sequence(model.encode_epochs(x))
    assert y.shape == expected_shape(name, 2, 5)
    torch.testing.assert_close(split, y, rtol=0, atol=0)
    with pytest.raises(ValueError, match="3000"):
        model(torch.randn(2, 5, 3, 2999))


def test_staging_model_normalisation_is_applied_and_saved():
    torch.manual_seed(0)
    mean, std = torch.randn(1, 29, 129), torch.rand(1, 29, 129) + 0.5
    model = StagingModel("seqsleepnet", 1, 3, norm_mean=mean, norm_std=std).eval()
    x = torch.randn(1, 3, 1, 3000)
    want = (model.frontend(x) - mean) / std
    torch.testing.assert_close(model.net_input(x), want)
    assert "normalizer.mean" in model.state_dict() and "normalizer.std" in model.state_dict()
    raw = StagingModel("deepsleepnet", 1, 3, **SMALL_DSN)
    assert raw.frontend is None and "normalizer.mean" not in raw.state_dict()
    with pytest.raises(ValueError, match="raw signal"):
        raw.set_normalisation(mean, std)
    with pytest.raises(ValueError, match="lacks 'net'"):
        StagingModel.from_config({"n_channels": 1, "seq_len": 3}, model.state_dict())


def test_staging_model_with_running_stats():
    torch.manual_seed(0)
    model = StagingModel("e2e-arnn", 2, 1)
    x = torch.randn(64, 1, 2, 3000) * torch.linspace(0.5, 2, 64).view(64, 1, 1, 1)
    stats = RunningStats()
    for chunk in x.split(16):
        stats.update(model.frontend(chunk))
    model.set_normalisation(*stats.finalize())
    z = model.net_input(x).double()  # (64, 1, 2, 29, 129): per channel and bin, over epochs and frames pooled
    torch.testing.assert_close(z.mean(dim=(0, 1, 3)), torch.zeros(2, 129, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(dim=(0, 1, 3), unbiased=False), torch.ones(2, 129, dtype=torch.float64),
                               atol=1e-4, rtol=0)
