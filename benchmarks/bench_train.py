"""Benchmark of training: throughput of SeqSleepNet (L=20, batch 32, 3 channels, CPU) through the real data
pipeline against a bare torch loop on in-memory tensors, the front end's share of a step, and the time of
one pass over 10 simulated 8-h nights.

Four measurements, in one process, on the same prepared dataset (10 simulated nights, generated and
prepared once, cached):

- ``bare``: ``StagingModel("seqsleepnet", 3, 20)`` trained on batches already in memory (8 real batches
  cycled), with train.py's loss (``loss_fn`` + L2 via ``l2_penalty``) and Adam: the reference.
- ``pipeline``: the same loop fed by train.py's own pieces: ``WindowDataset`` (memory-mapped night files) +
  ``PassBatches`` + ``DataLoader`` (workers as train.py picks them on CPU: 0).
- ``train_model``: ``sleepstage_cli.training.train.train_model`` itself (no validation); its step rate is read from
  per-step timestamps of its progress callback, so set-up (normalisation statistics) and saving do not count.
- ``loader only``: the DataLoader iterated without a model (what a batch costs to fetch).

``bare`` and ``pipeline`` steps alternate one by one so that changing machine load hits both alike; medians
(and means, CPU times, the median of the per-pair ratios) are reported. The front end's share comes from
forward hooks timing ``model.frontend`` + ``model.normalizer`` inside the bare steps. Overhead = pipeline
step time / bare step time - 1 (target < 20 %).

    python benchmarks/bench_train.py            # full
    python benchmarks/bench_train.py --quick    # fewer steps
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

SEQ_LEN, BATCH, N_CHANNELS = 20, 32, 3


def ensure_dataset(work: Path, n_nights: int, hours: float) -> Path:
    """A prepared dataset of ``n_nights`` simulated nights (prepared once with ``sleepstage prepare``)."""
    src = C.make_nights(work / f"nights{n_nights}x{hours:g}h", n_nights, hours, seed=1)
    ds = work / f"dataset{n_nights}x{hours:g}h"
    manifest, stamp = ds / "manifest.json", src[0].parent / "nights.json"
    if not manifest.exists() or manifest.stat().st_mtime < stamp.stat().st_mtime:
        t0 = time.perf_counter()
        subprocess.run([C.sleepstage_exe(), "prepare", str(src[0].parent), "-o", str(ds), "--layout", "generic",
                        *C.CHANNEL_ARGS, "--jobs", "2", "--force", "--strict"], check=True,
                       stdout=subprocess.DEVNULL)
        print(f"  prepared {n_nights} nights into {ds} ({time.perf_counter() - t0:.0f} s, not timed)")
    return ds


class StepTimer:
    """Forward hooks timing the front end of every forward: from ``model.frontend``'s start (or, when the
    spectrograms come from the cache and the frontend is not called, from ``model.normalizer``'s start) to
    the end of ``model.normalizer``."""

    def __init__(self, model) -> None:
        self.front = 0.0
        self._t0: float | None = None
        model.frontend.register_forward_pre_hook(self._start)
        model.normalizer.register_forward_pre_hook(self._start_if_idle)
        model.normalizer.register_forward_hook(self._stop)

    def _start(self, *_):
        self._t0 = time.perf_counter()

    def _start_if_idle(self, *_):
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def _stop(self, *_):
        if self._t0 is not None:
            self.front += time.perf_counter() - self._t0
        self._t0 = None


def make_model(stats: tuple | None, seed: int = 0):
    import torch

    from sleepstage_cli.model.staging import StagingModel

    torch.manual_seed(seed)
    model = StagingModel("seqsleepnet", N_CHANNELS, SEQ_LEN)
    if stats is not None:
        model.set_normalisation(*stats)
    model.train()
    return model


def train_steps(model, opt, batches, n: int, l2: float = 1e-3, detail: dict | None = None,
                cpu: list[float] | None = None, spectrogram: bool = False) -> list[float]:
    """Run ``n`` training steps on ``batches`` (an iterator of (x, y)); returns each step's wall seconds.

    With ``detail``, accumulates seconds of fetching, forward, loss, backward and optimiser step; with ``cpu``,
    appends each step's process CPU seconds. With ``spectrogram``, ``x`` holds cached spectrograms and the
    model is called as train.py calls it then (``model(x, spectrogram=True)``).
    """
    from sleepstage_cli.training.train import l2_penalty, loss_fn

    times = []
    for _ in range(n):
        c0 = time.process_time()
        t0 = time.perf_counter()
        x, y = next(batches)
        t1 = time.perf_counter()
        logits = model(x, spectrogram=True) if spectrogram else model(x)
        t2 = time.perf_counter()
        loss, _ = loss_fn(logits, y, "sequence")
        total = loss + l2 * l2_penalty(model)
        t3 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        total.backward()
        t4 = time.perf_counter()
        opt.step()
        float(loss.detach())
        t5 = time.perf_counter()
        times.append(t5 - t0)
        if cpu is not None:
            cpu.append(time.process_time() - c0)
        if detail is not None:
            for k, v in (("fetch", t1 - t0), ("forward", t2 - t1), ("loss + L2", t3 - t2), ("backward", t4 - t3),
                         ("optimiser", t5 - t4)):
                detail[k] = detail.get(k, 0.0) + v
    return times


def loader_iter(ds, nights, seed: int = 0, feature_files: list | None = None):
    """train.py's data pipeline: WindowDataset (on cached spectrograms when ``feature_files`` are given) +
    PassBatches + DataLoader, pass after pass."""
    import torch
    from torch.utils.data import DataLoader

    from sleepstage_cli.data.loader import PassBatches, WindowDataset
    from sleepstage_cli.training.train import _seed_worker

    extra = {"feature_files": feature_files} if feature_files is not None else {}
    windows = WindowDataset(ds.root, nights, SEQ_LEN, list(range(N_CHANNELS)), **extra)
    for p in itertools.count():
        sampler = PassBatches(len(windows), BATCH, seed, p)
        yield from DataLoader(windows, batch_sampler=sampler, num_workers=0, pin_memory=False,
                              worker_init_fn=_seed_worker, generator=torch.Generator().manual_seed(seed))


def run_train_model(ds_root: Path, out: Path, steps: int, warmup: int) -> dict:
    """``train_model`` for ``warmup + steps`` steps; steady rate from its per-step callback timestamps."""
    from sleepstage_cli.training.train import Callbacks, TrainOptions, train_model

    stamps: list[float] = []

    class Stamp(Callbacks):
        def step(self, step, loss, seq_per_s, pass_index):
            stamps.append(time.perf_counter())

    opts = TrainOptions(net="seqsleepnet", seq_len=SEQ_LEN, batch_size=BATCH, epochs=1, eval_every=10**9,
                        device="cpu", max_steps=warmup + steps, seed=0)
    t0 = time.perf_counter()
    train_model(ds_root, out, opts, val_fraction=0.0, force=True, callbacks=Stamp())
    total = time.perf_counter() - t0
    per_step = [b - a for a, b in zip(stamps[warmup - 1:], stamps[warmup:])]
    return {"step_s": statistics.median(per_step), "mean_step_s": sum(per_step) / len(per_step),
            "setup_s": stamps[0] - t0, "total_s": total, "steps": len(stamps)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and blocks")
    ap.add_argument("--steps", type=int, default=None, help="steps per progress line (default 10, quick 4)")
    ap.add_argument("--blocks", type=int, default=None,
                    help="progress lines; bare and pipeline each run steps x blocks steps (default 3, quick 1)")
    ap.add_argument("--nights", type=int, default=10, help="simulated nights (default 10)")
    ap.add_argument("--hours", type=float, default=8.0, help="hours per simulated night (default 8)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--full-pass", action="store_true",
                    help="also time one real pass of train_model over all windows (long: minutes)")
    C.add_common_options(ap)
    args = ap.parse_args(argv)
    C.use_code(args.code)
    steps = args.steps or (4 if args.quick else 10)
    blocks = args.blocks or (1 if args.quick else 3)
    warmup = 2

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from sleepstage_cli.data.dataset import PreparedDataset
    from sleepstage_cli.data.loader import WindowDataset
    from sleepstage_cli.training.train import normalisation_stats

    print("bench_train: SeqSleepNet L=20, batch 32, 3 channels, CPU")
    machine = C.print_machine()
    work = args.workdir / "train"
    ds = PreparedDataset(ensure_dataset(work, args.nights, args.hours))
    nights = ds.nights
    n_windows = len(WindowDataset(ds.root, nights, SEQ_LEN, [0, 1, 2]))
    steps_per_pass = -(-n_windows // BATCH)
    # Since 4955fc7 train.py trains on cached spectrograms (specache.py); before, the front end ran every step.
    try:
        from sleepstage_cli.spectrograms.cache import SpectrogramCache
    except ImportError:
        SpectrogramCache = None
    feature_files, t_cache = None, 0.0
    t0 = time.perf_counter()
    if SpectrogramCache is not None:
        cache = SpectrogramCache(ds, [0, 1, 2])
        shutil.rmtree(cache.folder, ignore_errors=True)  # time a fresh build
        cache = SpectrogramCache(ds, [0, 1, 2])
        cache.ensure(nights, torch.device("cpu"))
        t_cache = time.perf_counter() - t0
        feature_files = cache.files(nights)
        t0 = time.perf_counter()
        stats = normalisation_stats(ds, nights, cache)
    else:
        stats = normalisation_stats(ds, nights, [0, 1, 2], torch.device("cpu"))
    t_stats = time.perf_counter() - t0
    cached = feature_files is not None
    print(f"  {len(nights)} nights, {sum(n.n_epochs for n in nights)} epochs, {n_windows} windows "
          f"= {steps_per_pass} steps per pass; normalisation statistics {t_stats:.1f} s"
          + (f"; spectrogram cache built in {t_cache:.1f} s (train.py trains on cached spectrograms)" if cached
             else " (train.py runs the front end every step)"))

    # In-memory reference batches: real windows (spectrograms when train.py uses the cache), cycled.
    fetch = loader_iter(ds, nights, seed=123, feature_files=feature_files)
    mem = [next(fetch) for _ in range(8)]
    del fetch
    raw_mem = mem
    if cached:  # raw-signal batches too, for the front end's cost when it runs every step
        fetch = loader_iter(ds, nights, seed=123)
        raw_mem = [next(fetch) for _ in range(2)]
        del fetch

    bare_model, pipe_model = make_model(stats), make_model(stats)
    bare_opt = torch.optim.Adam(bare_model.parameters(), lr=1e-4)
    pipe_opt = torch.optim.Adam(pipe_model.parameters(), lr=1e-4)
    timer = StepTimer(bare_model)
    bare_iter = itertools.cycle(mem)
    pipe_iter = loader_iter(ds, nights, feature_files=feature_files)
    train_steps(bare_model, bare_opt, bare_iter, warmup, spectrogram=cached)
    train_steps(pipe_model, pipe_opt, pipe_iter, warmup, spectrogram=cached)

    # Bare and pipeline steps alternate one by one, so that load changes hit both alike.
    bare_t, pipe_t, bare_cpu, pipe_cpu, loads = [], [], [], [], []
    bare_detail: dict[str, float] = {}
    pipe_detail: dict[str, float] = {}
    front_total = 0.0
    n_meas = steps * blocks
    for i in range(n_meas):
        if i % steps == 0:
            loads.append(C.wait_quiet(args.quiet_wait))
        front0 = timer.front
        bare_t += train_steps(bare_model, bare_opt, bare_iter, 1, detail=bare_detail, cpu=bare_cpu,
                              spectrogram=cached)
        front_total += timer.front - front0
        pipe_t += train_steps(pipe_model, pipe_opt, pipe_iter, 1, detail=pipe_detail, cpu=pipe_cpu,
                              spectrogram=cached)
        if (i + 1) % steps == 0:
            print(f"  steps {i + 2 - steps}-{i + 1}/{n_meas}: bare {statistics.median(bare_t[-steps:]):.3f} s/step, "
                  f"pipeline {statistics.median(pipe_t[-steps:]):.3f} s/step ({loads[-1]})")
    bare_total = sum(bare_t)

    # Fetching alone.
    it = loader_iter(ds, nights, seed=7, feature_files=feature_files)
    next(it)
    t0 = time.perf_counter()
    n_fetch = max(steps, 10)
    for _ in range(n_fetch):
        next(it)
    fetch_s = (time.perf_counter() - t0) / n_fetch
    del it

    # Front end alone on raw signals, forward only (no grad), for the record.
    x0 = raw_mem[0][0]
    with torch.no_grad():
        bare_model.normalizer(bare_model.frontend(x0))
        t0 = time.perf_counter()
        for _ in range(3):
            bare_model.normalizer(bare_model.frontend(x0))
        fe_alone = (time.perf_counter() - t0) / 3

    loads.append(C.wait_quiet(args.quiet_wait))
    print("  train_model ...")
    tm = run_train_model(ds.root, work / "bench-model.pt", n_meas, warmup)
    loads.append(C.load_now())
    full = None
    if args.full_pass:
        print(f"  train_model, one full pass ({steps_per_pass} steps) ...")
        full = run_train_model(ds.root, work / "bench-model.pt", steps_per_pass - warmup, warmup)
        loads.append(C.load_now())

    bare_s, pipe_s = statistics.median(bare_t), statistics.median(pipe_t)
    bare_c, pipe_c = statistics.median(bare_cpu), statistics.median(pipe_cpu)
    paired = statistics.median(p / b for p, b in zip(pipe_t, bare_t)) - 1
    overhead = pipe_s / bare_s - 1
    overhead_tm = tm["step_s"] / bare_s - 1
    # With the cache, the STFT runs once per epoch when the cache is built: counted here as if it were
    # rebuilt every pass (the cache is kept across runs, so this overstates it).
    amortised = t_cache / steps_per_pass
    front_share = (front_total + amortised * n_meas) / (bare_total + amortised * n_meas)
    pass_est = steps_per_pass * tm["step_s"]
    rows = [
        ["bare loop (in-memory tensors)", f"{bare_s:.3f}", f"{statistics.mean(bare_t):.3f}", f"{bare_c:.3f}",
         f"{BATCH / bare_s:.1f}", "reference"],
        ["pipeline (WindowDataset+PassBatches+DataLoader)", f"{pipe_s:.3f}", f"{statistics.mean(pipe_t):.3f}",
         f"{pipe_c:.3f}", f"{BATCH / pipe_s:.1f}",
         f"{100 * overhead:+.1f} % ({C.verdict(overhead < 0.20)}: < 20 %); paired {100 * paired:+.1f} %; "
         f"CPU {100 * (pipe_c / bare_c - 1):+.1f} %"],
        ["train_model (steady state, separate run)", f"{tm['step_s']:.3f}", f"{tm['mean_step_s']:.3f}", "",
         f"{BATCH / tm['step_s']:.1f}", f"{100 * overhead_tm:+.1f} % ({C.verdict(overhead_tm < 0.20)}: < 20 %)"],
        ["loader alone (fetch one batch)", f"{fetch_s:.3f}", "", "", "",
         f"{100 * fetch_s / bare_s:.1f} % of a bare step"],
    ]
    print()
    print(f"torch threads {torch.get_num_threads()}; machine before each block: " + "; ".join(loads))
    print(C.table(rows, ["loop", "s/step median", "mean", "CPU s/step", "sequences/s", "vs bare (median)"]))
    print()
    denom = bare_total + amortised * n_meas
    if cached:
        shares = [["front end: normalizer on cached spectrograms", f"{front_total / n_meas:.3f}",
                   f"{100 * front_total / denom:.1f} %"],
                  ["front end: cache build (STFT), amortised over 1 pass", f"{amortised:.3f}",
                   f"{100 * amortised * n_meas / denom:.1f} %"]]
    else:
        shares = [["front end (frontend + normalizer, forward)", f"{front_total / n_meas:.3f}",
                   f"{100 * front_total / denom:.1f} %"]]
    rest = {k: v for k, v in bare_detail.items() if k != "fetch"}
    rest["forward"] -= front_total
    for k, v in rest.items():
        shares.append([k if k != "forward" else "forward, network only", f"{v / n_meas:.3f}",
                       f"{100 * v / denom:.1f} %"])
    print(C.table(shares, ["share of a bare step", "s/step", "share"]))
    print(f"front end share {100 * front_share:.1f} % -> {C.verdict(front_share < 0.5)} (must not dominate: < 50 %); "
          f"front end on raw signals (STFT + normalizer), no autograd: {fe_alone:.3f} s per batch")
    print()
    pass_rows = [["one pass, estimated (steps x train_model step time)", f"{pass_est:.0f} s = {pass_est / 60:.1f} min",
                  f"{steps_per_pass} steps"]]
    if full:
        pass_rows.append(["one pass, measured (train_model, whole call)", f"{full['total_s']:.0f} s = "
                          f"{full['total_s'] / 60:.1f} min", f"incl. {full['setup_s']:.0f} s set-up"])
    if cached:
        pass_rows.append(["spectrogram cache, built once per dataset", f"{t_cache:.1f} s", "fresh build"])
    pass_rows.append(["train_model set-up before its first step", f"{tm['setup_s']:.1f} s",
                      "cache check, normalisation statistics" if cached else "normalisation statistics"])
    print(C.table(pass_rows, [f"pass over {len(nights)} nights ({n_windows} windows)", "time", "note"]))
    if args.json:
        C.save_json(args.json, {"machine": machine, "loads": loads, "bare_steps": bare_t, "pipe_steps": pipe_t,
                                "bare_cpu": bare_cpu, "pipe_cpu": pipe_cpu, "train_model": tm, "fetch_s": fetch_s,
                                "front_share": front_share, "bare_detail": bare_detail, "pipe_detail": pipe_detail,
                                "front_alone_s": fe_alone, "cached": cached, "cache_build_s": t_cache,
                                "n_windows": n_windows, "steps_per_pass": steps_per_pass,
                                "pass_estimate_s": pass_est, "full_pass": full, "steps": steps, "blocks": blocks})
    return 0


if __name__ == "__main__":
    sys.exit(main())
