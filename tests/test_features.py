"""Front end (STFT log-magnitude), normalisation statistics and the normaliser."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.signal import ShortTimeFFT
from scipy.signal.windows import hamming

from sleepstage_cli.spectrograms.frontend import MAG_FLOOR, Normalizer, RunningStats, SpectrogramFrontEnd


def scipy_log_spectrogram(x: np.ndarray) -> np.ndarray:
    """Independent reference: (..., 3000) -> (..., 29, 129) dB with scipy's ShortTimeFFT.

    Hop 100, symmetric Hamming(200), mfft 256, one-sided, no scaling, no detrend, and only the frames
    that lie entirely inside the epoch (slices p = 1..29; slice p is centred on sample 100 p).
    """
    sft = ShortTimeFFT(hamming(200, sym=True), hop=100, fs=100, mfft=256, fft_mode="onesided", scale_to=None)
    flat = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])  # 2-D: scipy's zero-padding wants it
    z = sft.stft(flat, p0=1, p1=30, axis=-1)  # (N, 129, 29)
    return (20 * np.log10(np.abs(z))).swapaxes(-1, -2).reshape(*x.shape[:-1], 29, 129)


def random_epochs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """White and brown (integrated) noise, standardised: the latter has very weak high-frequency bins."""
    white = rng.standard_normal(shape)
    brown = np.cumsum(rng.standard_normal(shape), axis=-1)
    x = np.concatenate([white, brown], axis=0)
    return ((x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)).astype(np.float32)


def test_front_end_matches_scipy():
    rng = np.random.default_rng(0)
    x = random_epochs(rng, (4, 3, 3000))  # (8, 3, 3000)
    ref = scipy_log_spectrogram(x)  # float32 values, computed in float64
    out = SpectrogramFrontEnd()(torch.from_numpy(x))
    assert out.shape == (8, 3, 29, 129)
    assert out.dtype == torch.float32
    assert np.abs(out.numpy() - ref).max() < 1e-3

    out64 = SpectrogramFrontEnd()(torch.from_numpy(x.astype(np.float64)))
    assert out64.dtype == torch.float64
    assert np.abs(out64.numpy() - ref).max() < 1e-8


def test_front_end_window_is_matlab_hamming():
    n = np.arange(200)
    matlab = 0.54 - 0.46 * np.cos(2 * np.pi * n / 199)
    np.testing.assert_allclose(SpectrogramFrontEnd().window().numpy(), matlab, atol=1e-12)


def test_front_end_sinusoid_peaks_at_its_bin():
    t = torch.arange(3000, dtype=torch.float64) / 100
    out = SpectrogramFrontEnd()(torch.sin(2 * torch.pi * 12.5 * t))  # 12.5 Hz = bin 32 of 256 at 100 Hz
    assert (out.argmax(dim=-1) == 32).all()


def test_front_end_frames_stay_inside_epochs():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 3000)
    out = SpectrogramFrontEnd()(x)
    assert out.shape == (2, 5, 3, 29, 129)
    alone = SpectrogramFrontEnd()(x[1, 3])
    torch.testing.assert_close(out[1, 3], alone, rtol=0, atol=0)
    y = x.clone()
    y[1, 2] = 100.0  # changing the previous epoch must not leak into the next one
    torch.testing.assert_close(SpectrogramFrontEnd()(y)[1, 3], out[1, 3], rtol=0, atol=0)


def test_front_end_flat_epoch_is_finite():
    out = SpectrogramFrontEnd()(torch.zeros(2, 3000))
    assert torch.isfinite(out).all()
    assert torch.allclose(out, torch.full_like(out, 20 * np.log10(MAG_FLOOR)))


def test_front_end_under_autocast_and_half_input():
    torch.manual_seed(0)
    x = torch.randn(3, 3000)
    fe = SpectrogramFrontEnd()
    ref = fe(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fe(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert fe(x.to(torch.bfloat16)).dtype == torch.float32


def test_front_end_rejects_wrong_epoch_length():
    with pytest.raises(ValueError, match="3000"):
        SpectrogramFrontEnd()(torch.zeros(2, 2999))


def per_bin_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of every (channel, bin) over all epochs and frames, repeated over the frames."""
    mean = x.mean(axis=(0, 2), keepdims=True)[0]
    std = x.std(axis=(0, 2), keepdims=True)[0]
    shape = x.shape[1:]
    return np.broadcast_to(mean, shape), np.broadcast_to(std, shape)


@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_running_stats_pool_frames_per_bin(offset):
    # The 1e6 offset defeats a naive sum-of-squares variance (it would lose ~4 digits).
    rng = np.random.default_rng(1)
    # Each frame and bin gets its own level and spread, so per-cell and per-bin statistics differ.
    level = rng.normal(scale=10, size=(2, 29, 129))
    spread = rng.uniform(0.5, 5, size=(2, 29, 129))
    parts = [offset + level + rng.normal(size=(n, 2, 29, 129)) * spread for n in (1, 7, 30, 64)]
    everything = np.concatenate(parts)
    want_mean, want_std = per_bin_reference(everything)
    assert want_mean.shape == (2, 29, 129)

    single = RunningStats()
    for p in parts:
        single.update(p)
    a, b = RunningStats(), RunningStats()
    a.update(parts[0]).update(parts[2])
    b.update(parts[1]).update(parts[3])
    merged = a.merge(b).merge(RunningStats())  # merging an empty accumulator changes nothing

    for stats in (single, merged):
        assert stats.count == len(everything)
        mean, std = stats.finalize()
        assert mean.shape == std.shape == (2, 29, 129)
        np.testing.assert_allclose(mean.numpy(), want_mean, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(std.numpy(), want_std, rtol=1e-8)
        # the same value in every frame of a bin
        assert torch.equal(mean, mean[:, :1].expand_as(mean)) and torch.equal(std, std[:, :1].expand_as(std))
    # not the per-cell statistics
    assert not np.allclose(single.finalize()[1].numpy(), everything.std(axis=0), rtol=1e-2)


@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_running_stats_per_cell_option(offset):
    rng = np.random.default_rng(1)
    parts = [offset + rng.normal(size=(n, 2, 29, 129)) * rng.uniform(0.5, 5) for n in (1, 7, 30, 64)]
    everything = np.concatenate(parts)
    single = RunningStats(pool_frames=False)
    for p in parts:
        single.update(p)
    a, b = RunningStats(pool_frames=False), RunningStats(pool_frames=False)
    a.update(parts[0]).update(parts[2])
    b.update(parts[1]).update(parts[3])
    for stats in (single, a.merge(b)):
        mean, std = stats.finalize()
        np.testing.assert_allclose(mean.numpy(), everything.mean(axis=0), rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(std.numpy(), everything.std(axis=0), rtol=1e-8)
    with pytest.raises(ValueError, match="pooled"):
        RunningStats().merge(single)


def test_running_stats_accept_float32_tensors():
    torch.manual_seed(0)
    batches = [torch.randn(n, 1, 29, 129) * 10 + 40 + torch.linspace(0, 5, 29)[:, None] for n in (5, 11)]
    stats = RunningStats()
    for b in batches:
        stats.update(b)
    want_mean, want_std = per_bin_reference(torch.cat(batches).double().numpy())
    mean, std = stats.finalize()
    assert mean.dtype == std.dtype == torch.float64
    np.testing.assert_allclose(mean.numpy(), want_mean, rtol=1e-12)
    np.testing.assert_allclose(std.numpy(), want_std, rtol=1e-10)


def test_running_stats_floor_and_leading_dims():
    stats = RunningStats(min_std=0.5)
    stats.update(torch.full((2, 3, 1, 29, 129), 7.0))  # (B, L, C, ...) accepted
    mean, std = stats.finalize()
    assert stats.count == 6
    assert mean.shape == (1, 29, 129)
    assert torch.all(mean == 7.0) and torch.all(std == 0.5)
    with pytest.raises(ValueError, match="no epochs"):
        RunningStats().finalize()
    with pytest.raises(ValueError, match="shape"):
        stats.update(np.zeros((4, 2, 29, 129)))
    with pytest.raises(ValueError, match="shape"):
        stats.update(np.zeros((4, 1, 28, 129)))  # frames must match too: they weigh in the pooled count


def test_old_per_cell_statistics_still_load_and_apply():
    """A model file written before per-bin pooling holds per-cell statistics; it loads and uses them."""
    from sleepstage_cli.model.staging import StagingModel

    torch.manual_seed(0)
    old_mean = torch.randn(2, 29, 129) * 10  # varies over frames: per-cell, as the old accumulator gave
    old_std = torch.rand(2, 29, 129) * 5 + 1
    old = StagingModel("e2e-arnn", 2, 1)
    state = {k: v.clone() for k, v in old.state_dict().items()}
    state["normalizer.mean"], state["normalizer.std"] = old_mean, old_std
    model = StagingModel.from_config(old.config(), state)
    torch.testing.assert_close(model.normalizer.mean, old_mean, rtol=0, atol=0)
    torch.testing.assert_close(model.normalizer.std, old_std, rtol=0, atol=0)
    x = torch.randn(3, 1, 2, 3000)
    torch.testing.assert_close(model.net_input(x), (model.frontend(x) - old_mean) / old_std)


def test_normalizer():
    torch.manual_seed(0)
    mean, std = torch.randn(2, 29, 129), torch.rand(2, 29, 129) + 0.5
    norm = Normalizer(2)
    assert norm.is_identity
    x = torch.randn(3, 4, 2, 29, 129)
    torch.testing.assert_close(norm(x), x)
    norm.set(mean, std)
    assert not norm.is_identity
    torch.testing.assert_close(norm(x), (x - mean) / std)
    assert set(norm.state_dict()) == {"mean", "std"}
    fresh = Normalizer(2)
    fresh.load_state_dict(norm.state_dict())
    torch.testing.assert_close(fresh(x), norm(x))
    with pytest.raises(ValueError, match="shape"):
        norm.set(mean[:1], std[:1])
    with pytest.raises(ValueError, match="std > 0"):
        norm.set(mean, torch.zeros_like(std))
    with pytest.raises(ValueError):
        norm(torch.randn(3, 1, 29, 129))
