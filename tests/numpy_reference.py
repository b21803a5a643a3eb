"""Independent numpy implementations of the networks' equations, written from SPEC.md and the standard
definitions of the cells (not from the package's code), for the tests to compare the torch modules with.

Everything runs in float64, step by step, in eval mode (no dropout, batch norms with running statistics).
Weights are read by name from a module's ``state_dict`` converted with :func:`numpy_state`.
"""

from __future__ import annotations

import numpy as np
import torch

# SPEC.md: the figures the networks must have.
N_FILTERS = 32  # triangular filters per channel, linearly spaced over 0-50 Hz
N_FFT, SAMPLERATE, N_BINS = 256, 100.0, 129
HIDDEN = 64  # units per direction, both levels
ATTENTION_SEQSLEEPNET = 64
ATTENTION_ARNN = 32
DROPOUT = 0.25  # keep probability 0.75, on the recurrent layers' inputs and outputs
CLASSES = ("W", "N1", "N2", "N3", "REM")
BN_EPS = 1e-3  # the batch-normalised LSTM's epsilon (released code)


def numpy_state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().double().numpy() for k, v in module.state_dict().items()}


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def triangular_bank(n_filters: int = N_FILTERS, n_fft: int = N_FFT, fs: float = SAMPLERATE,
                    low: float = 0.0, high: float = 50.0) -> np.ndarray:
    """(n_fft/2+1, n_filters): n_filters+2 points equally spaced in Hz, mapped to FFT bins as the original
    ``lin_tri_filter_shape`` (floor((n_fft+1) hz / fs)); filter j is the triangle 0 -> 1 -> 0 over
    points j, j+1, j+2, by linear interpolation over the bin index."""
    points = np.floor((n_fft + 1) * np.linspace(low, high, n_filters + 2) / fs)
    bins = np.arange(n_fft // 2 + 1)
    return np.stack(
        [np.interp(bins, points[j:j + 3], [0.0, 1.0, 0.0], left=0.0, right=0.0) for j in range(n_filters)], axis=1
    )


# ------------------------------------------------------------------------------------------------ cells


def gru_direction(x: np.ndarray, w_ih, w_hh, b_ih, b_hh) -> np.ndarray:
    """PyTorch's GRU (gates r, z, n; the reset gate multiplies W_hn h + b_hn): (N, T, I) -> (N, T, H)."""
    n, steps, _ = x.shape
    hid = w_hh.shape[1]
    h = np.zeros((n, hid))
    out = np.empty((n, steps, hid))
    for t in range(steps):
        gi = x[:, t] @ w_ih.T + b_ih
        gh = h @ w_hh.T + b_hh
        r = sigmoid(gi[:, :hid] + gh[:, :hid])
        z = sigmoid(gi[:, hid:2 * hid] + gh[:, hid:2 * hid])
        cand = np.tanh(gi[:, 2 * hid:] + r * gh[:, 2 * hid:])
        h = (1.0 - z) * cand + z * h
        out[:, t] = h
    return out


def lstm_direction(x: np.ndarray, w_ih, w_hh, b_ih, b_hh) -> np.ndarray:
    """PyTorch's LSTM (gates i, f, g, o): (N, T, I) -> (N, T, H)."""
    n, steps, _ = x.shape
    hid = w_hh.shape[1]
    h, c = np.zeros((n, hid)), np.zeros((n, hid))
    out = np.empty((n, steps, hid))
    for t in range(steps):
        a = x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        i, f, g, o = (a[:, k * hid:(k + 1) * hid] for k in range(4))
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        out[:, t] = h
    return out


def _bn(x: np.ndarray, mean: np.ndarray, var: np.ndarray, gamma: np.ndarray, beta=None) -> np.ndarray:
    y = gamma * (x - mean) / np.sqrt(var + BN_EPS)
    return y if beta is None else y + beta


def _step_bn(v: np.ndarray, p: dict[str, np.ndarray], name: str, step: int) -> np.ndarray:
    """Batch normalisation ``name`` of a BN-LSTM with the running statistics of time step ``step``."""
    return _bn(v, p[f"{name}.running_mean"][step], p[f"{name}.running_var"][step], p[f"{name}.weight"],
               p.get(f"{name}.bias"))


def bnlstm_direction(x: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """Recurrent batch normalisation (Cooijmans et al. 2017) in inference, statistics per time step (the
    last one reused beyond the stored ones), gates i, f, g, o::

        a = BN(W_ih x_t) + BN(W_hh h) + b;  c = s(f) c + s(i) tanh(g);  h = s(o) tanh(BN(c))

    ``p`` holds weight_ih, weight_hh, bias and bn_{ih,hh,c}.{weight,bias,running_mean,running_var}.
    """
    n, steps, _ = x.shape
    hid = p["weight_hh"].shape[1]
    stored = p["bn_ih.running_mean"].shape[0]
    h, c = np.zeros((n, hid)), np.zeros((n, hid))
    out = np.empty((n, steps, hid))
    for t in range(steps):
        s = min(t, stored - 1)
        a = (_step_bn(x[:, t] @ p["weight_ih"].T, p, "bn_ih", s) + _step_bn(h @ p["weight_hh"].T, p, "bn_hh", s)
             + p["bias"])
        i, f, g, o = (a[:, k * hid:(k + 1) * hid] for k in range(4))
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(_step_bn(c, p, "bn_c", s))
        out[:, t] = h
    return out


def bidirectional(x: np.ndarray, sd: dict[str, np.ndarray], prefix: str, rnn: str) -> np.ndarray:
    """One bidirectional layer read from ``sd`` under ``prefix`` (the cell module): (N, T, I) -> (N, T, 2H)."""
    prefix = f"{prefix}." if prefix else ""
    if rnn == "bnlstm":
        def params(d):
            head = f"{prefix}layers.0.{d}."
            return {k[len(head):]: v for k, v in sd.items() if k.startswith(head)}

        fwd = bnlstm_direction(x, params("fwd"))
        bwd = bnlstm_direction(x[:, ::-1], params("bwd"))[:, ::-1]
    else:
        cell = {"gru": gru_direction, "lstm": lstm_direction}[rnn]

        def run(xx, sfx):
            return cell(xx, *(sd[f"{prefix}{w}_l0{sfx}"] for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))

        fwd = run(x, "")
        bwd = run(x[:, ::-1], "_reverse")[:, ::-1]
    return np.concatenate([fwd, bwd], axis=-1)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def attention(h: np.ndarray, w: np.ndarray, b: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a_t = softmax_t(v^T tanh(W h_t + b)); returns (sum_t a_t h_t, a)."""
    a = softmax(np.tanh(h @ w.T + b) @ v, axis=-1)
    return np.einsum("nt,ntd->nd", a, h), a


# ------------------------------------------------------------------------------------------- networks


def epoch_level(sd: dict[str, np.ndarray], x: np.ndarray, rnn: str, attention_size: int,
                prefix: str = "encoder") -> tuple[np.ndarray, np.ndarray]:
    """SeqSleepNet's epoch level on normalised spectrograms (E, C, 29, 129) -> ((E, 2H), attention (E, 29))."""
    e, c, frames, bins = x.shape
    w = sd[f"{prefix}.filterbank.weight"]
    assert w.shape == (c, N_BINS, N_FILTERS), w.shape
    bank = sigmoid(w) * triangular_bank()[None]  # (C, F, K)
    # each frame's spectrum times its channel's bank; channels concatenated per frame (channel-major)
    feats = np.concatenate([x[:, k] @ bank[k] for k in range(c)], axis=-1)  # (E, 29, C*K)
    h = bidirectional(feats, sd, f"{prefix}.rnn.rnn", rnn)
    assert h.shape[-1] == 2 * HIDDEN
    pw, pb, v = sd[f"{prefix}.attention.proj.weight"], sd[f"{prefix}.attention.proj.bias"], sd[f"{prefix}.attention.v"]
    assert pw.shape == (attention_size, 2 * HIDDEN) and v.shape == (attention_size,)
    return attention(h, pw, pb, v)


def seqsleepnet_forward(sd: dict[str, np.ndarray], x: np.ndarray, rnn: str) -> tuple[np.ndarray, np.ndarray]:
    """SeqSleepNet (SPEC): (B, L, C, 29, 129) -> logits (B, L, 5) and attention (B, L, 29)."""
    b, l = x.shape[:2]
    z, a = epoch_level(sd, x.reshape(b * l, *x.shape[2:]), rnn, ATTENTION_SEQSLEEPNET)
    s = bidirectional(z.reshape(b, l, -1), sd, "seq_rnn.rnn", rnn)  # (B, L, 2H)
    w, bias = sd["output.weight"], sd["output.bias"]
    assert w.shape == (l, len(CLASSES), 2 * HIDDEN), "one output layer per position"
    logits = np.stack([s[:, p] @ w[p].T + bias[p] for p in range(l)], axis=1)
    return logits, a.reshape(b, l, -1)
