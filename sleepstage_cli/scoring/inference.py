"""Scoring a night with the paper's test-time aggregation, encoding every epoch only once.

For sequence networks every epoch t is covered by up to L windows of L consecutive epochs (stride 1);
its score is the sum of the log-probabilities from all of them and its stage the argmax. The epoch
level (filterbank, BiRNN, attention: the expensive part) is run once per epoch and its encodings are
reused by every window; only the sequence level runs per window.

Calibration (temperature scaling): an epoch's probabilities are the softmax of its *mean* aggregated
log-probability divided by the model's temperature T, ``softmax(mean_lp / T)`` (:func:`tempered_softmax`).
T divides the mean over windows of the per-window log-softmax outputs, not the per-window logits; for
an epoch seen by a single window this is the usual ``softmax(logits / T)``. T > 0 never changes the
argmax, so the stages (and ``log_scores``, kept uncalibrated) do not depend on it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from sleepstage_cli.model.staging import StagingModel


@dataclass
class NightScores:
    """Aggregated outputs for one night of N epochs."""

    log_scores: np.ndarray  # (N, 5) summed log-probabilities
    probabilities: np.ndarray  # (N, 5) softmax of the mean log-probability per epoch over the temperature
    coverage: np.ndarray  # (N,) number of predictions summed per epoch
    attention: np.ndarray | None  # (N, 29) epoch-level attention weights, if asked and available
    padded: bool  # the night was shorter than one sequence and was padded to score it
    # With ``positions=True``: each window's own prediction per output position, before aggregation, and
    # the epoch each position stands for (-1: outside the night), both (W, P); what --select per-position reads.
    window_stages: np.ndarray | None = None
    window_epochs: np.ndarray | None = None

    @property
    def stages(self) -> np.ndarray:
        return self.log_scores.argmax(axis=1)

    @property
    def mean_log_probabilities(self) -> np.ndarray:
        """(N, 5) mean over the windows covering each epoch of their log-probabilities (what T divides)."""
        return self.log_scores / self.coverage[:, None]


def tempered_softmax(mean_lp: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(mean_lp / temperature)`` along the last axis (the calibrated probabilities; T > 0)."""
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number above 0, got {temperature!r}")
    z = np.asarray(mean_lp, dtype=np.float64) / float(temperature)
    prob = np.exp(z - z.max(axis=-1, keepdims=True))
    return prob / prob.sum(axis=-1, keepdims=True)


def autocast_for(device: torch.device, enabled: bool):
    """Mixed precision on CUDA (float16), nothing elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


CPU_BATCH = 256
"""Epochs encoded per batch on a CPU: larger batches were no faster there (benchmarks/RESULTS.md, "Nights in bulk")."""
GPU_BATCH_RANGE = (256, 4096)
EPOCH_BYTES_PER_CHANNEL = 192 * 1024
"""Working memory of encoding one epoch, per channel (measured on CPU: 160 kB, input, float64 STFT and
activations together, the same for all three networks), rounded up."""


def default_batch_size(device: torch.device | str, n_channels: int) -> int:
    """Epochs per batch when none is given: :data:`CPU_BATCH` except on CUDA, where a batch may take a
    quarter of the device's free memory, within :data:`GPU_BATCH_RANGE`."""
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_BATCH
    free, _total = torch.cuda.mem_get_info(device)
    low, high = GPU_BATCH_RANGE
    return int(min(high, max(low, free // 4 // (EPOCH_BYTES_PER_CHANNEL * max(1, n_channels)))))


@torch.no_grad()
def encode_night(model: StagingModel, x: np.ndarray | torch.Tensor, device: torch.device, batch_size: int = 256,
                 attention: bool = False, amp: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Epoch encodings (N, D) of a night's epochs ``x`` (N, C, 3000), in chunks."""
    chunks, alphas = [], []
    want_attention = attention and model.has_attention
    for start in range(0, len(x), batch_size):
        xb = torch.as_tensor(np.asarray(x[start:start + batch_size], dtype=np.float32)).to(device)[None]
        with autocast_for(device, amp):
            out = model.encode_epochs(xb, return_attention=want_attention)
        if want_attention:
            z, alpha = out
            alphas.append(alpha[0].float())
        else:
            z = out
        chunks.append(z[0].float())
    z = torch.cat(chunks)
    return z, (torch.cat(alphas) if want_attention else None)


@torch.no_grad()
def score_night(model: StagingModel, x: np.ndarray | torch.Tensor, device: torch.device | str = "cpu",
                batch_size: int = 256, attention: bool = False, amp: bool = False,
                positions: bool = False, temperature: float = 1.0) -> NightScores:
    """Aggregated log-probabilities for every epoch of one night (model in eval mode).

    ``positions``: also keep every window's per-position predictions (``window_stages``, ``window_epochs``).
    ``temperature``: the model's calibration T (``LoadedModel.temperature``); probabilities are
    ``softmax(mean log-probability / T)``, the stages do not depend on it.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    tempered_softmax(np.zeros(1), temperature)  # refuses a bad temperature before the network runs
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        n = len(x)
        if n == 0:
            raise ValueError("a night with no epochs cannot be scored")
        z, alpha = encode_night(model, x, device, batch_size, attention, amp)
        kind = getattr(model.net, "aggregation", "sequence")
        acc = torch.zeros(n, 5, dtype=torch.float64, device=device)
        cov = torch.zeros(n, dtype=torch.float64, device=device)
        padded = False
        stages, epochs = [], []  # per-window predictions and their epochs, kept only with ``positions``
        if kind == "epoch":
            with autocast_for(device, amp):
                lp = torch.log_softmax(model.classify_sequence(z[None]).float(), -1)[0]
            acc += lp.double()
            cov += 1
            stages.append(lp.argmax(-1)[:, None])
            epochs.append(torch.arange(n, device=device)[:, None])
        elif kind == "neighbours":
            with autocast_for(device, amp):
                lp = torch.log_softmax(model.classify_sequence(z[None]).float(), -1)[0].double()  # (N, 3, 5)
            stages.append(lp.argmax(-1))
            around = torch.arange(n, device=device)[:, None] + torch.arange(-1, 2, device=device)[None, :]
            epochs.append(torch.where((around >= 0) & (around < n), around, -1))
            acc += lp[:, 1]
            cov += 1
            if n > 1:
                acc[:-1] += lp[1:, 0]  # epoch t+1's view of its previous epoch
                acc[1:] += lp[:-1, 2]  # epoch t-1's view of its next epoch
                cov[:-1] += 1
                cov[1:] += 1
        else:
            L = model.seq_len
            if n < L:
                # Too short for one window: mirror the encodings to fill it, keep the first n outputs.
                padded = True
                idx = torch.as_tensor(np.pad(np.arange(n), (0, L - n), mode="symmetric"), device=device)
                with autocast_for(device, amp):
                    lp = torch.log_softmax(model.classify_sequence(z[idx][None]).float(), -1)[0]
                acc += lp[:n].double()
                cov += 1
                stages.append(lp[:n].argmax(-1)[None])
                epochs.append(torch.arange(n, device=device)[None])
            else:
                n_windows = n - L + 1
                offsets = torch.arange(L, device=device)
                per_batch = max(1, batch_size)
                for s0 in range(0, n_windows, per_batch):
                    starts = torch.arange(s0, min(s0 + per_batch, n_windows), device=device)
                    idx = starts[:, None] + offsets[None, :]  # (b, L)
                    with autocast_for(device, amp):
                        lp = torch.log_softmax(model.classify_sequence(z[idx]).float(), -1).double()
                    acc.index_add_(0, idx.reshape(-1), lp.reshape(-1, 5))
                    if positions:
                        stages.append(lp.argmax(-1))
                        epochs.append(idx)
                    cov.index_add_(0, idx.reshape(-1), torch.ones(idx.numel(), dtype=torch.float64, device=device))
        log_scores = acc.cpu().numpy()
        coverage = cov.cpu().numpy()
        prob = tempered_softmax(log_scores / coverage[:, None], temperature)
        out = NightScores(log_scores=log_scores, probabilities=prob, coverage=coverage,
                          attention=None if alpha is None else alpha.cpu().numpy(), padded=padded)
        if positions:
            out.window_stages = torch.cat(stages).cpu().numpy()
            out.window_epochs = torch.cat(epochs).cpu().numpy()
        return out
    finally:
        model.train(was_training)
