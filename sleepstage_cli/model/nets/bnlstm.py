"""Batch-normalised LSTM (recurrent batch normalisation, Cooijmans et al., ICLR 2017): the released cell.

The released SeqSleepNet code uses this cell in both levels (its ``bnlstm.py``). Per time step t, with
input x_t, previous state (h, c) and gates in the order i, f, g, o (as ``torch.nn.LSTM``)::

    gates = BN_ih(W_ih x_t; gamma_ih) + BN_hh(W_hh h; gamma_hh) + b
    c'    = sigmoid(f) * c + sigmoid(i) * tanh(g)
    h'    = sigmoid(o) * tanh(BN_c(c'; gamma_c, beta_c))

The two projections are normalised separately; their BNs have a scale gamma (initialised to 0.1, as in
the paper) but no shift: the LSTM bias b (initialised to 0) is the shift of their sum. BN_c has a scale
(0.1) and a learnable shift beta_c (initialised to 0). The cell state c itself is carried un-normalised.
h and c start at zero. W_ih and W_hh are initialised orthogonal gate by gate.

Batch statistics (:class:`StepBatchNorm`), as Cooijmans et al.: separate statistics for every time step.

- Training mode: each time step is normalised with the mean and (biased) variance over the batch of
  that step's values. The running averages of step t (t < ``max_steps``) are then updated with momentum
  0.1, as ``torch.nn.BatchNorm1d`` (running variance from the unbiased batch variance); steps from
  ``max_steps`` on leave the running averages alone.
- Eval mode: step t is normalised with the running averages of step ``min(t, max_steps - 1)``: the last
  one is reused beyond the training length. Nothing is updated.
- ``max_steps`` is the training length: 29 frames at the epoch level, the sequence length L at the
  sequence level. The backward cell counts its steps from its own start (the last frame is its step 0).
- eps = 1e-3 (the released code's value) inside the square root.

At step 0 the recurrent input h is zero, so W_hh h is zero in every sequence: its batch variance is 0 and
its running statistics stay at mean 0, variance 0, and BN_hh(0) = 0 in both modes (with per-step
statistics there is no train/eval mismatch there, which shared statistics would have).

The recurrence runs in float32 (float64 for float64 input) with autocast disabled, so mixed precision
cannot degrade the batch statistics; the output is cast back to the input's dtype. It is plain torch
(a Python loop over the time steps) and runs on any device. Sequences are full length: the networks
here feed no padding or packed sequences, so there are no lengths or masks to honour.
"""

from __future__ import annotations

import torch
from torch import nn

GAMMA_INIT = 0.1
BN_EPS = 1e-3
BN_MOMENTUM = 0.1


class StepBatchNorm(nn.Module):
    """Batch normalisation over the batch dimension with statistics kept per time step.

    Input ``(N, S, F)``: S consecutive time steps starting at step ``t0``, each normalised with its own
    statistics (see the module docstring for training and eval modes). :class:`BNLSTMCell` uses the
    pieces (:meth:`running`, :meth:`track`) inside its own loop.

    Parameters
    ----------
    features : int
        Features F.
    max_steps : int
        Time steps with their own running statistics; later steps use the last one's.
    shift : bool
        Learn a shift beta (initialised to 0); without it the output is ``gamma * x_hat``.
    gamma : float
        Initial scale.
    """

    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(
        self,
        features: int,
        max_steps: int,
        shift: bool = True,
        gamma: float = GAMMA_INIT,
        eps: float = BN_EPS,
        momentum: float = BN_MOMENTUM,
    ) -> None:
        super().__init__()
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.features = features
        self.max_steps = max_steps
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.full((features,), float(gamma)))
        self.bias = nn.Parameter(torch.zeros(features)) if shift else None
        self.register_buffer("running_mean", torch.zeros(max_steps, features))
        self.register_buffer("running_var", torch.ones(max_steps, features))

    def running(self, t0: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Running mean and variance ``(steps, F)`` for steps t0.., the last stored one reused beyond."""
        if t0 + steps <= self.max_steps:
            return self.running_mean[t0:t0 + steps], self.running_var[t0:t0 + steps]
        idx = torch.arange(t0, t0 + steps, device=self.running_mean.device).clamp_max(self.max_steps - 1)
        return self.running_mean[idx], self.running_var[idx]

    @torch.no_grad()
    def track(self, mean: torch.Tensor, var: torch.Tensor, n: int, t0: int = 0) -> None:
        """Fold batch statistics ``(S, F)`` (biased variance over n samples) of steps t0.. into the
        running averages; steps from ``max_steps`` on are not tracked."""
        k = min(t0 + mean.shape[0], self.max_steps) - t0
        if k <= 0:
            return
        unbiased = var[:k] * (n / (n - 1)) if n > 1 else var[:k]
        self.running_mean[t0:t0 + k].lerp_(mean[:k].to(self.running_mean), self.momentum)
        self.running_var[t0:t0 + k].lerp_(unbiased.to(self.running_var), self.momentum)

    def forward(self, x: torch.Tensor, t0: int = 0) -> torch.Tensor:
        if self.training:
            var, mean = torch.var_mean(x, dim=0, correction=0)  # (S, F)
            self.track(mean, var, x.shape[0], t0)
        else:
            mean, var = (s.to(x.dtype) for s in self.running(t0, x.shape[1]))
        y = (x - mean) * torch.rsqrt(var + self.eps) * self.weight.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.features}, max_steps={self.max_steps}, shift={self.bias is not None}, eps={self.eps}"


class BNLSTMCell(nn.Module):
    """One direction of a batch-normalised LSTM layer: ``(N, T, input_size) -> (N, T, hidden)``.

    Parameters ``weight_ih`` (4H, I), ``weight_hh`` (4H, H), ``bias`` (4H), gates ordered i, f, g, o;
    batch norms ``bn_ih``, ``bn_hh`` (no shift) and ``bn_c`` (with shift). See the module docstring.
    """

    def __init__(self, input_size: int, hidden: int, max_steps: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden = hidden
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden, hidden))
        self.bias = nn.Parameter(torch.zeros(4 * hidden))
        for w in (self.weight_ih, self.weight_hh):
            for gate in w.detach().split(hidden):
                nn.init.orthogonal_(gate)
        self.bn_ih = StepBatchNorm(4 * hidden, max_steps, shift=False)
        self.bn_hh = StepBatchNorm(4 * hidden, max_steps, shift=False)
        self.bn_c = StepBatchNorm(hidden, max_steps, shift=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_cells([self], x.unsqueeze(0))[0]


def run_cells(cells: list[BNLSTMCell], x: torch.Tensor) -> torch.Tensor:
    """Run D cells of the same shape side by side, cell d on ``x[d]``: ``(D, N, T, I) -> (D, N, T, H)``.

    One Python loop over the time steps serves all directions (their weights stacked, ``bmm``); in
    training the running statistics are updated once, after the loop.
    """
    d, n, steps, _ = x.shape
    hid = cells[0].hidden
    dt = x.dtype
    training = cells[0].training

    def stacked(get) -> torch.Tensor:  # (D, 1, F): one row per cell, broadcast over the batch
        return torch.stack([get(c).to(dt) for c in cells]).unsqueeze(1)

    bns = {name: [getattr(c, name) for c in cells] for name in ("bn_ih", "bn_hh", "bn_c")}
    eps = {name: m[0].eps for name, m in bns.items()}
    gamma = {name: stacked(lambda c, name=name: getattr(c, name).weight) for name in bns}
    beta_c = stacked(lambda c: c.bn_c.bias)
    w_ih = torch.stack([c.weight_ih.to(dt) for c in cells])  # (D, 4H, I)
    w_hh = torch.stack([c.weight_hh.to(dt) for c in cells]).transpose(1, 2)  # (D, H, 4H)
    bias = stacked(lambda c: c.bias)

    def running(name: str) -> tuple[torch.Tensor, torch.Tensor]:  # (D, T, F) each
        pairs = [m.running(0, steps) for m in bns[name]]
        return torch.stack([p[0] for p in pairs]).to(dt), torch.stack([p[1] for p in pairs]).to(dt)

    # Input projections of all steps at once, normalised per (direction, step).
    xh = torch.matmul(x.reshape(d, n * steps, -1), w_ih.transpose(1, 2)).reshape(d, n, steps, 4 * hid)
    if training:
        var, mean = torch.var_mean(xh, dim=1, correction=0)  # (D, T, 4H)
        for k, m in enumerate(bns["bn_ih"]):
            m.track(mean[k], var[k], n)
    else:
        mean, var = running("bn_ih")
    xh = (xh - mean.unsqueeze(1)) * torch.rsqrt(var.unsqueeze(1) + eps["bn_ih"]) * gamma["bn_ih"].unsqueeze(1)
    xh = xh + bias.unsqueeze(1)

    if not training:
        run_hh, run_c = running("bn_hh"), running("bn_c")
    seen_hh: list[tuple[torch.Tensor, torch.Tensor]] = []
    seen_c: list[tuple[torch.Tensor, torch.Tensor]] = []
    h = x.new_zeros(d, n, hid)
    c = x.new_zeros(d, n, hid)
    out = []
    for t in range(steps):
        hh = torch.bmm(h, w_hh)  # (D, N, 4H)
        if training:
            v, m = torch.var_mean(hh, dim=1, keepdim=True, correction=0)
            seen_hh.append((m, v))
        else:
            m, v = run_hh[0][:, t:t + 1], run_hh[1][:, t:t + 1]
        gates = xh[:, :, t] + (hh - m) * torch.rsqrt(v + eps["bn_hh"]) * gamma["bn_hh"]
        sig = torch.sigmoid(gates)
        c = sig[..., hid:2 * hid] * c + sig[..., :hid] * torch.tanh(gates[..., 2 * hid:3 * hid])
        if training:
            v, m = torch.var_mean(c, dim=1, keepdim=True, correction=0)
            seen_c.append((m, v))
        else:
            m, v = run_c[0][:, t:t + 1], run_c[1][:, t:t + 1]
        c_hat = (c - m) * torch.rsqrt(v + eps["bn_c"]) * gamma["bn_c"] + beta_c
        h = sig[..., 3 * hid:] * torch.tanh(c_hat)
        out.append(h)

    if training:
        for name, seen in (("bn_hh", seen_hh), ("bn_c", seen_c)):
            mean = torch.cat([s[0] for s in seen], dim=1)  # (D, T, F)
            var = torch.cat([s[1] for s in seen], dim=1)
            for k, m in enumerate(bns[name]):
                m.track(mean[k], var[k], n)
    return torch.stack(out, dim=2)


class BNLSTM(nn.Module):
    """Bidirectional batch-normalised LSTM, ``batch_first``: ``(N, T, input_size) -> (N, T, 2*hidden)``.

    A forward and a backward :class:`BNLSTMCell` (the backward one reads the time-reversed input; its
    output is reversed back), outputs concatenated forward first, as ``nn.LSTM(bidirectional=True)``;
    the two cells run side by side in one loop (:func:`run_cells`). With ``num_layers > 1`` the layers
    are stacked with ``dropout`` between them. ``forward`` returns ``(output, None)`` so that it can stand
    in for ``nn.GRU``/``nn.LSTM``.

    Parameters
    ----------
    input_size, hidden : int
        Input features and units per direction.
    max_steps : int
        Training length: time steps with their own batch-norm statistics (module docstring).
    num_layers : int
        Stacked bidirectional layers.
    dropout : float
        Dropout between stacked layers.
    """

    def __init__(
        self, input_size: int, hidden: int, max_steps: int, num_layers: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    "fwd": BNLSTMCell(input_size if k == 0 else 2 * hidden, hidden, max_steps),
                    "bwd": BNLSTMCell(input_size if k == 0 else 2 * hidden, hidden, max_steps),
                }
            )
            for k in range(num_layers)
        )
        self.between = nn.Dropout(dropout)
        # as nn.LSTM names them
        self.hidden_size = hidden
        self.num_layers = num_layers
        self.bidirectional = True

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        if x.ndim != 3:
            raise ValueError(f"BNLSTM expects (N, T, features), got {tuple(x.shape)}")
        out_dtype = x.dtype
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = x.to(work)
            for k, layer in enumerate(self.layers):
                if k:
                    y = self.between(y)
                both = run_cells([layer["fwd"], layer["bwd"]], torch.stack([y, y.flip(1)]))
                y = torch.cat([both[0], both[1].flip(1)], dim=-1)
        return y.to(out_dtype), None
