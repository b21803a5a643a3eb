"""GPU against CPU: training sequences/s and scoring nights/s, one table (benchmarks/gpu_check.sh runs it).

Two measurements, each on the CPU and on the device under test (``--device-under-test``, default ``cuda``):

- **training**: ``train_model`` itself, in this process, on a prepared dataset of simulated nights (SeqSleepNet,
  L = 20, batch 32, 3 channels, no validation); on CUDA with mixed precision, the default there. The rate is
  the steady state: batch size over the median time between the progress callback's calls, after
  ``--warmup`` steps (spectrogram cache, normalisation statistics, cuDNN's first calls and writing the model
  do not count).
- **scoring**: ``sleepstage score FOLDER -o OUT --model M --device cpu|cuda`` on ``--nights`` simulated 8-h
  nights, one whole process with its default outputs (CSV and report): nights / wall time, start-up
  (imports, CUDA, loading the model) included. And the rate after start-up, (N - 1) / (t_N - t_1), from a
  second run on the first night alone. Reading and conditioning the EDF and writing the report run on the
  CPU in both columns.

The table has one row per figure: measure | CPU | GPU | GPU/CPU. ``--device-under-test cpu`` fills the GPU
column from the CPU with the same code: a dry run of the whole measuring path on a machine without a GPU
(``--tiny`` makes it take seconds). The data (simulated nights, prepared once) are cached in ``--workdir``;
generating them is not timed.

    python benchmarks/bench_gpu.py                                   # on a GPU machine (about 3 min)
    python benchmarks/bench_gpu.py --device-under-test cpu --tiny    # dry run anywhere
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

HEADER = ["measure", "CPU", "GPU", "GPU/CPU"]


def ensure_dataset(work: Path, n_nights: int, hours: float, log=print) -> tuple[list[Path], Path]:
    """``n_nights`` simulated nights (3-channel EDF + CSV hypnogram) and their prepared dataset (both cached)."""
    edfs = C.make_nights(work / f"nights{n_nights}x{hours:g}h", n_nights, hours, seed=2, log=log)
    ds = work / f"dataset{n_nights}x{hours:g}h"
    stamp = edfs[0].parent / "nights.json"
    manifest = ds / "manifest.json"
    if (not manifest.exists() or manifest.stat().st_mtime < stamp.stat().st_mtime
            or len(json.loads(manifest.read_text()).get("nights", [])) != n_nights):
        t0 = time.perf_counter()
        sub = subprocess.run([sys.executable, "-m", "sleepstage_cli", "prepare", str(edfs[0].parent), "-o", str(ds),
                              "--layout", "generic", *C.CHANNEL_ARGS, "--min-hours", "0", "--jobs", "2", "--force"],
                             capture_output=True, text=True)
        if sub.returncode != 0:
            raise SystemExit(f"sleepstage prepare failed:\n{sub.stderr[-2000:]}")
        log(f"  prepared {n_nights} night(s) into {ds} ({time.perf_counter() - t0:.0f} s, not timed)")
    return edfs, ds


def measure_training(ds: Path, out: Path, device: str, steps: int, warmup: int, seq_len: int,
                     batch_size: int) -> dict:
    """``train_model`` for ``warmup + steps`` steps on ``device``; the steady rate from its step callback."""
    import torch

    from sleepstage_cli.training.train import Callbacks, TrainOptions, train_model

    stamps: list[float] = []

    class Stamp(Callbacks):
        def step(self, step, loss, seq_per_s, pass_index):  # called after the step's loss reached the host
            stamps.append(time.perf_counter())

    opts = TrainOptions(net="seqsleepnet", seq_len=seq_len, batch_size=batch_size, epochs=10**6, eval_every=10**9,
                        device=device, max_steps=warmup + steps, seed=0)
    t0 = time.perf_counter()
    result = train_model(ds, out, opts, val_fraction=0.0, force=True, callbacks=Stamp())
    total = time.perf_counter() - t0
    per_step = [b - a for a, b in zip(stamps[warmup - 1:], stamps[warmup:])]  # the steps after the warm-up
    if len(stamps) != warmup + steps or not per_step:
        raise SystemExit(f"training on {device} reported {len(stamps)} steps, not {warmup + steps}")
    step_s = statistics.median(per_step)
    return {"device": device, "amp": device.startswith("cuda") and opts.amp, "steps_timed": len(per_step),
            "warmup_steps": warmup, "step_s": step_s, "sequences_per_s": batch_size / step_s,
            "setup_s": stamps[0] - t0, "total_s": total, "model": str(result.output),
            "threads": torch.get_num_threads()}


def run_score(source: Path, nights: list[Path], out: Path, model: Path, device: str) -> float:
    """Wall seconds of one ``sleepstage score SOURCE -o OUT`` process (a folder or a night), which must write
    the hypnograms of ``nights``."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "sleepstage_cli", "score", str(source), "-o", str(out), "--model", str(model),
           "--device", device]
    t0 = time.perf_counter()
    sub = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    seconds = time.perf_counter() - t0
    if sub.returncode != 0:
        raise SystemExit(f"sleepstage score --device {device} failed (exit {sub.returncode}):\n{sub.stderr[-2000:]}")
    written = sorted(p.stem for p in out.glob("*.csv") if p.name != "summary.csv")
    if written != sorted(p.stem for p in nights):
        raise SystemExit(f"sleepstage score --device {device} wrote hypnograms for {written}, not for every night")
    return seconds


def ratio(cpu: float, gpu: float) -> float:
    return gpu / cpu if cpu > 0 else math.nan


def figure(value: float, suffix: str = "") -> str:
    if not math.isfinite(value):
        return "n/a"
    return (f"{value:.3g}" if value < 100 else f"{value:.0f}") + suffix


def json_number(value: float) -> float | None:
    """NaN (a rate after start-up when the N-night run was not slower than the 1-night one) as null."""
    return value if math.isfinite(value) else None


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device-under-test", default="cuda",
                    help="the device of the GPU column (default cuda; cpu: a dry run of the measuring path)")
    ap.add_argument("--nights", type=int, default=4, help="simulated nights scored, and trained on (default 4)")
    ap.add_argument("--hours", type=float, default=8.0, help="sleep period of each simulated night (default 8)")
    ap.add_argument("--steps", type=int, default=60, help="timed training steps on the device under test (60)")
    ap.add_argument("--cpu-steps", type=int, default=12, help="timed training steps on the CPU (default 12)")
    ap.add_argument("--warmup", type=int, default=5, help="training steps before timing starts (default 5)")
    ap.add_argument("--seq-len", type=int, default=20, help="sequence length L (default 20)")
    ap.add_argument("--batch-size", type=int, default=32, help="training batch (default 32)")
    ap.add_argument("--repeats", type=int, default=1, help="score runs per device; medians (default 1)")
    ap.add_argument("--tiny", action="store_true",
                    help="seconds, not minutes: 2 nights of 0.25 h, 3 + 1 steps, L = 10, batch 8 (checks the path)")
    C.add_common_options(ap)
    args = ap.parse_args(argv)
    if args.tiny:
        args.nights, args.hours, args.steps, args.cpu_steps, args.warmup = 2, 0.25, 3, 3, 1
        args.seq_len, args.batch_size = 10, 8
    if args.nights < 2:
        ap.error("--nights must be at least 2 (the rate after start-up compares N nights with 1)")
    if min(args.steps, args.cpu_steps, args.warmup) < 1:
        ap.error("--steps, --cpu-steps and --warmup must be at least 1")
    C.use_code(args.code)

    import torch

    dut = args.device_under_test
    dry = not dut.startswith("cuda")
    if not dry and not torch.cuda.is_available():
        raise SystemExit(f"--device-under-test {dut}: no CUDA device is visible (torch {torch.__version__}); "
                         "--device-under-test cpu runs the same path on the CPU")
    gpus = ([f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available() else [])
    print(f"bench_gpu: CPU against {dut}" + (" (dry run: the GPU column is measured on the CPU)" if dry else
                                             f" with mixed precision; GPUs: {', '.join(gpus)}"), flush=True)
    machine = C.print_machine()
    work = args.workdir / "gpu"
    edfs, ds = ensure_dataset(work, args.nights, args.hours)
    scratch = work / "runs"
    scratch.mkdir(parents=True, exist_ok=True)

    print(f"training: SeqSleepNet L={args.seq_len}, batch {args.batch_size}, {args.nights} night(s) of "
          f"{args.hours:g} h; {args.warmup} warm-up + {args.cpu_steps} (CPU) / {args.steps} ({dut}) timed steps",
          flush=True)
    C.wait_quiet(args.quiet_wait)
    train_cpu = measure_training(ds, scratch / "train-cpu.pt", "cpu", args.cpu_steps, args.warmup, args.seq_len,
                                 args.batch_size)
    print(f"  cpu: {train_cpu['step_s']:.3f} s/step, {train_cpu['sequences_per_s']:.1f} sequences/s", flush=True)
    C.wait_quiet(args.quiet_wait)
    train_dut = measure_training(ds, scratch / "train-dut.pt", dut, args.steps, args.warmup, args.seq_len,
                                 args.batch_size)
    print(f"  {dut}: {train_dut['step_s']:.3f} s/step, {train_dut['sequences_per_s']:.1f} sequences/s", flush=True)

    model = Path(train_cpu["model"])  # the weights do not change what scoring costs
    print(f"scoring: sleepstage score on {args.nights} night(s) of {args.hours:g} h, and on the first alone; "
          f"{args.repeats} run(s) each", flush=True)
    columns = {"cpu": "cpu", "gpu": dut}  # column -> device (both the CPU in a dry run)
    runs: dict[str, dict[str, list[float]]] = {col: {"all": [], "one": []} for col in columns}
    for _ in range(args.repeats):
        for col, device in columns.items():  # alternate, so that a change of load hits both alike
            C.wait_quiet(args.quiet_wait)
            runs[col]["all"].append(run_score(edfs[0].parent, edfs, scratch / f"score-{col}", model, device))
            runs[col]["one"].append(run_score(edfs[0], edfs[:1], scratch / f"score1-{col}", model, device))
            print(f"  {device}: {runs[col]['all'][-1]:.1f} s for {args.nights} night(s), "
                  f"{runs[col]['one'][-1]:.1f} s for one", flush=True)
    score = {}
    for col, device in columns.items():
        t_all, t_one = statistics.median(runs[col]["all"]), statistics.median(runs[col]["one"])
        score[col] = {"device": device, "seconds_all": t_all, "seconds_one": t_one,
                      "nights_per_s": args.nights / t_all,
                      "nights_per_s_after_startup": json_number((args.nights - 1) / (t_all - t_one)
                                                                if t_all > t_one else math.nan),
                      "runs_all": runs[col]["all"], "runs_one": runs[col]["one"]}

    measures = [
        (f"training, sequences/s (steady, batch {args.batch_size}, L={args.seq_len})",
         train_cpu["sequences_per_s"], train_dut["sequences_per_s"]),
        (f"scoring, nights/s (whole command, {args.nights} nights)",
         score["cpu"]["nights_per_s"], score["gpu"]["nights_per_s"]),
        ("scoring, nights/s after start-up", score["cpu"]["nights_per_s_after_startup"] or math.nan,
         score["gpu"]["nights_per_s_after_startup"] or math.nan),
    ]
    print()
    print(C.table([[m, figure(c), figure(g), figure(ratio(c, g), "x")] for m, c, g in measures], HEADER))
    rows = [{"measure": m, "cpu": json_number(c), "gpu": json_number(g), "gpu_per_cpu": json_number(ratio(c, g))}
            for m, c, g in measures]
    if dry:
        print(f"(dry run: the GPU column was measured on {dut})")
    elapsed = time.perf_counter() - t_start
    print(f"elapsed: {elapsed:.0f} s")
    json_path = args.json or work / "bench_gpu.json"
    C.save_json(json_path, {"benchmark": "bench_gpu", "device_under_test": dut, "dry_run": dry, "gpus": gpus,
                            "amp": train_dut["amp"], "machine": machine, "rows": rows,
                            "sizes": {"nights": args.nights, "hours": args.hours, "steps": args.steps,
                                      "cpu_steps": args.cpu_steps, "warmup": args.warmup, "seq_len": args.seq_len,
                                      "batch_size": args.batch_size, "repeats": args.repeats},
                            "train": {"cpu": train_cpu, "gpu": train_dut}, "score": score,
                            "elapsed_s": elapsed})
    print(f"figures saved to {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
