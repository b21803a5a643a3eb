"""The networks against SPEC.md: an independent numpy forward pass, and every figure SPEC states.

These tests are meant to fail on real deviations from the method (a missing tanh, another dropout rate or
placement, another attention size or filter count, a shared output layer), which shape and training tests
do not see. The reference (tests/numpy_reference.py) is written from SPEC's equations, not from the code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy_reference import (
    ATTENTION_ARNN,
    ATTENTION_SEQSLEEPNET,
    CLASSES,
    DROPOUT,
    HIDDEN,
    N_BINS,
    N_FILTERS,
    epoch_level,
    numpy_state,
    seqsleepnet_forward,
    triangular_bank,
)
from torch import nn

from sleepstage_cli.model.nets import E2EARNN, MultitaskARNN, SeqSleepNet
from sleepstage_cli.model.nets.blocks import AdditiveAttention, EpochEncoder, TriangularFilterbank
from sleepstage_cli.model.nets.bnlstm import BNLSTM
from sleepstage_cli.stages import STAGES

RECURRENT = (nn.GRU, nn.LSTM, BNLSTM)
FRAMES = 29


def warm_up(net: nn.Module, x: torch.Tensor) -> None:
    """Training-mode forwards (no gradient) so that batch-norm running statistics are not trivial."""
    net.train()
    with torch.no_grad():
        for k in range(3):
            net(x * (1 + 0.5 * k) + k)
    net.eval()


# --------------------------------------------------------------------------- forward pass vs. numpy


@pytest.mark.parametrize(
    "rnn, c, l", [("gru", 2, 3), ("gru", 3, 2), ("lstm", 2, 3), ("bnlstm", 2, 3)]
)
def test_seqsleepnet_forward_matches_numpy_reference(rnn, c, l):
    torch.manual_seed(0)
    net = SeqSleepNet(n_channels=c, seq_len=l, rnn=rnn)
    x = torch.randn(3, l, c, FRAMES, N_BINS)
    if rnn == "bnlstm":
        warm_up(net, torch.randn(8, l, c, FRAMES, N_BINS))
    with torch.no_grad():  # larger attention scores, so that its tanh works outside its linear range
        net.encoder.attention.proj.weight.mul_(10)
    net.eval()
    with torch.no_grad():
        logits, alpha = net(x, return_attention=True)
    want_logits, want_alpha = seqsleepnet_forward(numpy_state(net), x.double().numpy(), rnn)
    assert logits.shape == (3, l, len(CLASSES))
    np.testing.assert_allclose(alpha.numpy(), want_alpha, atol=1e-5, rtol=0)
    np.testing.assert_allclose(logits.numpy(), want_logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls", [E2EARNN, MultitaskARNN])
def test_arnn_forward_matches_numpy_reference(cls):
    torch.manual_seed(0)
    net = cls(n_channels=2).eval()
    x = torch.randn(2, 4, 2, FRAMES, N_BINS)
    with torch.no_grad():
        logits, alpha = net(x, return_attention=True)
    sd = numpy_state(net)
    z, want_alpha = epoch_level(sd, x.double().numpy().reshape(8, 2, FRAMES, N_BINS), "gru", ATTENTION_ARNN)
    want = (z @ sd["output.weight"].T + sd["output.bias"]).reshape(2, 4, *logits.shape[2:])
    np.testing.assert_allclose(alpha.numpy(), want_alpha.reshape(2, 4, FRAMES), atol=1e-5, rtol=0)
    np.testing.assert_allclose(logits.numpy(), want, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------- the figures


def test_attention_sizes():
    """Attention size 64 in SeqSleepNet, 32 in the E2E-ARNN baselines (released settings)."""
    for net, size in ((SeqSleepNet(), ATTENTION_SEQSLEEPNET), (E2EARNN(), ATTENTION_ARNN),
                      (MultitaskARNN(), ATTENTION_ARNN)):
        att = [m for m in net.modules() if isinstance(m, AdditiveAttention)]
        assert len(att) == 1
        assert att[0].proj.out_features == size and att[0].v.shape == (size,), type(net).__name__
        assert att[0].proj.in_features == 2 * HIDDEN


def test_attention_scores_use_tanh():
    """The attention module itself: a = softmax_t(v^T tanh(W h_t + b))."""
    torch.manual_seed(0)
    att = AdditiveAttention(8, 4)
    h = torch.randn(2, 5, 8)
    with torch.no_grad():
        _, alpha = att(h)
        want = torch.softmax(torch.tanh(h @ att.proj.weight.T + att.proj.bias) @ att.v, dim=-1)
    torch.testing.assert_close(alpha, want)


@pytest.mark.parametrize("cls", [SeqSleepNet, E2EARNN, MultitaskARNN])
def test_filterbank_is_32_linear_triangles_over_0_50_hz(cls):
    net = cls(n_channels=3)
    banks = [m for m in net.modules() if isinstance(m, TriangularFilterbank)]
    assert len(banks) == 1
    fb = banks[0]
    assert fb.weight.shape == (3, N_BINS, N_FILTERS)  # one learnable bank per channel
    tri = fb.triangles.double().numpy()
    np.testing.assert_allclose(tri, triangular_bank(), rtol=0, atol=1e-7)
    # peaks at the 32 inner points of 34 equally spaced in 0-50 Hz (bin = floor(257 hz / 100))
    peaks = np.argmax(tri, axis=0)
    hz = 50.0 * np.arange(1, N_FILTERS + 1) / (N_FILTERS + 1)
    np.testing.assert_array_equal(peaks, np.floor(257 * hz / 100).astype(int))
    assert np.all(tri.max(axis=0) == 1) and np.all(tri >= 0)
    # effective bank = sigmoid(W) * triangles
    torch.testing.assert_close(fb.effective_weight(), torch.sigmoid(fb.weight) * fb.triangles)


def _recurrent_io(net: nn.Module, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """Run ``net`` once and capture, at every recurrent module, its input and output, and the tensors that
    feed it / that it feeds: filterbank output, attention input, epoch vectors, output-layer input."""
    seen: dict[str, list[torch.Tensor]] = {k: [] for k in ("fb", "rnn_in", "rnn_out", "att_in", "enc", "head_in")}
    hooks = []
    for m in net.modules():
        if isinstance(m, TriangularFilterbank):
            hooks.append(m.register_forward_hook(lambda mod, a, out: seen["fb"].append(out.detach())))
        if isinstance(m, RECURRENT):
            hooks.append(m.register_forward_pre_hook(lambda mod, a: seen["rnn_in"].append(a[0].detach())))
            hooks.append(m.register_forward_hook(lambda mod, a, out: seen["rnn_out"].append(out[0].detach())))
        if isinstance(m, AdditiveAttention):
            hooks.append(m.register_forward_pre_hook(lambda mod, a: seen["att_in"].append(a[0].detach())))
        if isinstance(m, EpochEncoder):
            hooks.append(m.register_forward_hook(lambda mod, a, out: seen["enc"].append(out[0].detach())))
    hooks.append(net.output.register_forward_pre_hook(lambda mod, a: seen["head_in"].append(a[0].detach())))
    try:
        net(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _assert_dropped(source: torch.Tensor, dropped: torch.Tensor, p: float, what: str) -> None:
    """``dropped`` is ``source`` with a fraction ~p of elements zeroed and the rest scaled by 1/(1-p)."""
    source = source.reshape(dropped.shape)
    zero = dropped == 0
    frac = zero.double().mean().item()
    assert abs(frac - p) < 0.05, f"{what}: {frac:.3f} of the values dropped, expected {p}"
    torch.testing.assert_close(dropped[~zero], source[~zero] / (1 - p), rtol=1e-5, atol=1e-6, msg=what)


@pytest.mark.parametrize("cls", [SeqSleepNet, E2EARNN])
def test_dropout_on_recurrent_inputs_and_outputs(cls):
    """Dropout 0.25 (keep 0.75) exactly where SPEC puts it: before and after each recurrent layer."""
    torch.manual_seed(0)
    kw = {"seq_len": 4} if cls is SeqSleepNet else {}
    net = cls(n_channels=2, **kw).train()
    x = torch.randn(6, 4, 2, FRAMES, N_BINS)
    seen = _recurrent_io(net, x)
    n_rnn = 2 if cls is SeqSleepNet else 1
    assert len(seen["rnn_in"]) == len(seen["rnn_out"]) == n_rnn
    epoch_in, epoch_out = seen["rnn_in"][0], seen["rnn_out"][0]
    assert epoch_in.shape[1] == FRAMES and epoch_out.shape[-1] == 2 * HIDDEN  # 64 units per direction
    # epoch level: filterbank -> dropout -> BiRNN -> dropout -> attention
    _assert_dropped(seen["fb"][0], epoch_in, DROPOUT, "epoch-level RNN input")
    _assert_dropped(epoch_out, seen["att_in"][0], DROPOUT, "epoch-level RNN output")
    if cls is SeqSleepNet:
        # sequence level: epoch vectors -> dropout -> BiRNN -> dropout -> per-position output layers
        seq_in, seq_out = seen["rnn_in"][1], seen["rnn_out"][1]
        assert seq_in.shape == (6, 4, 2 * HIDDEN) and seq_out.shape == (6, 4, 2 * HIDDEN)
        _assert_dropped(seen["enc"][0], seq_in, DROPOUT, "sequence-level RNN input")
        _assert_dropped(seq_out, seen["head_in"][0], DROPOUT, "sequence-level RNN output")
    else:
        torch.testing.assert_close(seen["head_in"][0], seen["enc"][0].reshape(seen["head_in"][0].shape))
    # eval mode: no dropout anywhere
    net.eval()
    with torch.no_grad():
        seen = _recurrent_io(net, x)
    torch.testing.assert_close(seen["rnn_in"][0], seen["fb"][0], rtol=0, atol=0)
    torch.testing.assert_close(seen["att_in"][0], seen["rnn_out"][0], rtol=0, atol=0)


@pytest.mark.parametrize("rnn", ["gru", "lstm", "bnlstm"])
def test_hidden_units_per_direction(rnn):
    net = SeqSleepNet(n_channels=1, seq_len=2, rnn=rnn)
    rnns = [m for m in net.modules() if isinstance(m, RECURRENT)]
    assert len(rnns) == 2
    for m in rnns:
        assert m.hidden_size == HIDDEN and m.bidirectional and m.num_layers == 1


def test_separate_output_layer_per_position():
    torch.manual_seed(0)
    l = 20
    net = SeqSleepNet(n_channels=1, seq_len=l).eval()
    head = net.output
    assert sum(p.numel() for p in head.parameters()) == l * (2 * HIDDEN * len(CLASSES) + len(CLASSES))
    same = torch.randn(3, 1, 2 * HIDDEN).expand(3, l, 2 * HIDDEN)
    with torch.no_grad():
        y = head(same)
    assert y.shape == (3, l, len(CLASSES))
    for p in range(1, l):
        assert not torch.allclose(y[:, 0], y[:, p]), f"positions 0 and {p} share their output layer"
    # position p's logits depend on position p's parameters only
    y = head(torch.randn(3, l, 2 * HIDDEN))
    y[:, 5].sum().backward()
    grads = [p.grad for p in head.parameters()]
    for g in grads:
        flat = g.reshape(l, -1)
        assert flat[5].abs().sum() > 0
        assert torch.all(flat[torch.arange(l) != 5] == 0)


def test_classes():
    assert STAGES == CLASSES
    torch.manual_seed(0)
    with torch.no_grad():
        assert SeqSleepNet(n_channels=1, seq_len=2).eval()(torch.randn(1, 2, 1, FRAMES, N_BINS)).shape[-1] == 5
        assert E2EARNN(n_channels=1).eval()(torch.randn(1, 2, 1, FRAMES, N_BINS)).shape[-1] == 5
        assert MultitaskARNN(n_channels=1).eval()(torch.randn(1, 2, 1, FRAMES, N_BINS)).shape[-2:] == (3, 5)


@pytest.mark.parametrize("rnn", ["gru", "bnlstm"])
@pytest.mark.parametrize("cls", [SeqSleepNet, E2EARNN, MultitaskARNN])
def test_filterbank_not_regularised(cls, rnn):
    """L2 on all weights but the filterbanks (SPEC); biases and batch-norm scales are our exemption."""
    kw = {"seq_len": 3} if cls is SeqSleepNet else {}
    net = cls(n_channels=3, rnn=rnn, **kw)
    reg = {id(p) for p in net.regularised_parameters()}
    fb = [m for m in net.modules() if isinstance(m, TriangularFilterbank)]
    assert all(id(m.weight) not in reg for m in fb)
    weights = {n: p for n, p in net.named_parameters()
               if n.endswith(("weight", "weight_ih", "weight_hh", "weight_ih_l0", "weight_hh_l0",
                              "weight_ih_l0_reverse", "weight_hh_l0_reverse", ".v"))
               and ".bn_" not in n and "filterbank" not in n}
    assert weights
    for n, p in weights.items():
        assert id(p) in reg, n
