"""The batch-normalised LSTM (recurrent batch normalisation, the released SeqSleepNet cell)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from numpy_reference import bidirectional, bnlstm_direction, numpy_state
from torch import nn

from sleepstage_cli.model.nets import E2EARNN, MultitaskARNN, SeqSleepNet
from sleepstage_cli.model.nets.blocks import BiRNN
from sleepstage_cli.model.nets.bnlstm import BNLSTM, BNLSTMCell, StepBatchNorm
from sleepstage_cli.model.staging import StagingModel


def warmed(module: nn.Module, x: torch.Tensor, passes: int = 3) -> nn.Module:
    """A few training-mode forwards so that the running statistics are no longer 0 / 1."""
    module.train()
    with torch.no_grad():
        for k in range(passes):
            module(x * (1 + 0.3 * k) + 0.2 * k)
    return module.eval()


def randomise_affine(module: nn.Module) -> None:
    """Move the batch norms' gammas/betas and the biases away from their initial values."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or ".bn_" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)


def test_shapes_and_layout():
    torch.manual_seed(0)
    rnn = BNLSTM(7, 5, max_steps=6)
    y, state = rnn(torch.randn(4, 6, 7))
    assert y.shape == (4, 6, 10) and state is None
    cell = rnn.layers[0]["fwd"]
    assert cell.weight_ih.shape == (20, 7) and cell.weight_hh.shape == (20, 5) and cell.bias.shape == (20,)
    assert cell.bn_ih.running_mean.shape == (6, 20) and cell.bn_c.running_var.shape == (6, 5)
    # initial values: gammas 0.1, no shift on the projections, shift 0 on the cell, bias 0
    assert torch.all(cell.bn_ih.weight == 0.1) and torch.all(cell.bn_hh.weight == 0.1)
    assert torch.all(cell.bn_c.weight == 0.1) and torch.all(cell.bn_c.bias == 0)
    assert cell.bn_ih.bias is None and cell.bn_hh.bias is None
    assert torch.all(cell.bias == 0)
    deep = BNLSTM(7, 5, max_steps=6, num_layers=2)
    assert deep(torch.randn(3, 9, 7))[0].shape == (3, 9, 10)  # longer than max_steps is fine
    with pytest.raises(ValueError, match="max_steps"):
        BiRNN(7, 5, "bnlstm")
    with pytest.raises(ValueError, match="bnlstm"):
        BiRNN(7, 5, "rnn")


def test_eval_output_matches_numpy_reference():
    torch.manual_seed(0)
    rnn = BNLSTM(6, 4, max_steps=5)
    randomise_affine(rnn)
    warmed(rnn, torch.randn(16, 5, 6) * 2 + 1)
    sd = numpy_state(rnn)
    # statistics differ between steps (else per-step storage would not be exercised)
    assert not np.allclose(sd["layers.0.fwd.bn_c.running_var"][1], sd["layers.0.fwd.bn_c.running_var"][4])
    for steps in (5, 3, 8):  # 8 > max_steps: the last step's statistics are reused
        x = torch.randn(3, steps, 6) * 2 + 1
        with torch.no_grad():
            y, _ = rnn(x)
        want = bidirectional(x.double().numpy(), sd, "", "bnlstm")
        np.testing.assert_allclose(y.numpy(), want, atol=1e-5, rtol=0)


def test_running_statistics_are_per_step_and_only_updated_in_training():
    torch.manual_seed(0)
    cell = BNLSTMCell(3, 2, max_steps=4)
    x = torch.randn(8, 6, 3) + torch.arange(6.0).view(1, 6, 1)  # the level changes from step to step
    cell.eval()
    with torch.no_grad():
        cell(x)
    assert torch.all(cell.bn_ih.running_mean == 0) and torch.all(cell.bn_ih.running_var == 1)
    cell.train()
    with torch.no_grad():
        cell(x)
    proj = (x @ cell.weight_ih.T).double()  # (8, 6, 8)
    want_mean = 0.1 * proj.mean(0)[:4]
    want_var = 0.9 + 0.1 * proj.var(0, unbiased=True)[:4]
    torch.testing.assert_close(cell.bn_ih.running_mean.double(), want_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cell.bn_ih.running_var.double(), want_var, rtol=1e-5, atol=1e-6)
    # step 0 of the recurrent projection sees h = 0: zero statistics, zero output in both modes
    assert torch.all(cell.bn_hh.running_mean[0] == 0) and torch.all(cell.bn_hh.running_var[0] == 0.9)


def test_train_and_eval_modes_differ_as_designed():
    torch.manual_seed(0)
    rnn = warmed(BNLSTM(6, 4, max_steps=5), torch.randn(32, 5, 6))
    x = torch.randn(6, 5, 6)
    other = x.clone()
    other[1:] = torch.randn(5, 5, 6) * 3 + 2  # same first sequence, different batch mates
    with torch.no_grad():
        rnn.eval()
        e1, e2 = rnn(x)[0], rnn(other)[0]
        rnn.train()
        t1, t2 = rnn(x)[0], rnn(other)[0]
    torch.testing.assert_close(e1[0], e2[0], rtol=0, atol=1e-6)  # eval: each sequence on its own
    assert not torch.allclose(t1[0], t2[0], atol=1e-3)  # train: batch statistics
    assert not torch.allclose(t1[0], e1[0], atol=1e-3)
    # training mode normalises each step by the batch: the cell's BN output has mean beta, std gamma
    cell = rnn.layers[0]["fwd"]
    seen = []
    hook = cell.bn_c.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    with torch.no_grad():
        cell(torch.randn(64, 5, 6))
    hook.remove()
    for out in seen:
        torch.testing.assert_close(out.mean(0), cell.bn_c.bias.detach().expand(1, -1), atol=1e-5, rtol=0)


def test_gradients_flow():
    torch.manual_seed(0)
    rnn = BNLSTM(6, 4, max_steps=5).train()
    x = torch.randn(8, 5, 6, requires_grad=True)
    y, _ = rnn(x)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in rnn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_autocast_does_not_reach_the_recurrence():
    torch.manual_seed(0)
    rnn = warmed(BNLSTM(6, 4, max_steps=5), torch.randn(16, 5, 6))
    x = torch.randn(3, 5, 6)
    with torch.no_grad():
        plain = rnn(x)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = rnn(x)[0]
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain, rtol=0, atol=0)


@pytest.mark.parametrize("cls", [SeqSleepNet, E2EARNN, MultitaskARNN])
def test_nets_take_bnlstm(cls):
    torch.manual_seed(0)
    net = cls(n_channels=2, rnn="bnlstm", **({"seq_len": 3} if cls is SeqSleepNet else {})).eval()
    cells = [m for m in net.modules() if isinstance(m, BNLSTM)]
    assert len(cells) == (2 if cls is SeqSleepNet else 1)
    assert cells[0].layers[0]["fwd"].bn_ih.max_steps == 29
    if cls is SeqSleepNet:
        assert cells[1].layers[0]["fwd"].bn_ih.max_steps == 3
    with torch.no_grad():
        y, alpha = net(torch.randn(2, 3, 2, 29, 129), return_attention=True)
    assert y.shape[:2] == (2, 3) and alpha.shape == (2, 3, 29)
    # the batch norms' scales and shifts are not L2-regularised; the cell weights are
    reg = {id(p) for p in net.regularised_parameters()}
    for m in net.modules():
        if isinstance(m, StepBatchNorm):
            assert all(id(p) not in reg for p in m.parameters())
        if isinstance(m, BNLSTMCell):
            assert id(m.weight_ih) in reg and id(m.weight_hh) in reg and id(m.bias) not in reg


def test_seqsleepnet_bnlstm_learns_a_tiny_batch():
    torch.manual_seed(0)
    net = SeqSleepNet(n_channels=2, seq_len=3, rnn="bnlstm", dropout=0.0).train()
    x = torch.randn(4, 3, 2, 29, 129)
    target = torch.randint(0, 5, (4, 3))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)

    def loss() -> torch.Tensor:
        return nn.functional.cross_entropy(net(x).reshape(-1, 5), target.reshape(-1))

    first = loss().item()
    for _ in range(15):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.7 * first


def test_state_dict_round_trip():
    torch.manual_seed(0)
    model = StagingModel("seqsleepnet", n_channels=2, seq_len=3, rnn="bnlstm")
    model.set_normalisation(torch.randn(2, 29, 129), torch.rand(2, 29, 129) + 1)
    x = torch.randn(4, 3, 2, 3000)
    model.train()
    with torch.no_grad():
        model(x)  # running statistics move away from their initial values
    state = model.state_dict()
    assert any(k.endswith("bn_hh.running_var") for k in state)
    config = json.loads(json.dumps(model.config()))
    assert config["hparams"]["rnn"] == "bnlstm"
    torch.manual_seed(1)
    rebuilt = StagingModel.from_config(config, state).eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)


def test_numpy_reference_of_one_direction_agrees_with_the_cell():
    """The reference's per-direction function against the cell alone (guards the reference itself)."""
    torch.manual_seed(3)
    cell = BNLSTMCell(4, 3, max_steps=2)
    randomise_affine(cell)
    warmed(cell, torch.randn(10, 2, 4))
    x = torch.randn(2, 4, 4)
    with torch.no_grad():
        y = cell(x)
    np.testing.assert_allclose(y.numpy(), bnlstm_direction(x.double().numpy(), numpy_state(cell)), atol=1e-5)
