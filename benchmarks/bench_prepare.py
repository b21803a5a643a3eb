"""Benchmark of ``sleepstage prepare``: seconds and peak memory per 8-h, 3-channel, 256-Hz night; nights/s with
``--jobs 2`` against ``--jobs 1``.

Every figure is a whole ``sleepstage prepare`` process (start to manifest written), measured from outside:
wall time with ``time.perf_counter``; memory as ru_maxrss reported by ``/usr/bin/time -f %M`` (the largest
single process of the tree) and as the peak of the summed RSS of the process tree (psutil, 20-ms polling,
which counts parallel workers together). Test nights are simulated MASS nights rewritten as 3-channel EDFs
(generated once, cached, never timed). A per-stage breakdown of one night (in-process) follows.

    python benchmarks/bench_prepare.py            # full: 3 repeats of each
    python benchmarks/bench_prepare.py --quick    # 1 repeat
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def prepare_cmd(src: Path, out: Path, jobs: int) -> list[str]:
    return [C.sleepstage_exe(), "prepare", str(src), "-o", str(out), "--layout", "generic", *C.CHANNEL_ARGS,
            "--jobs", str(jobs), "--force", "--strict"]


def timed_prepare(src: Path, out: Path, jobs: int) -> C.ProcRun:
    """One fresh prepare run (the output folder is removed first, outside the timing)."""
    shutil.rmtree(out, ignore_errors=True)
    return C.check(C.run_process(prepare_cmd(src, out, jobs)), f"prepare --jobs {jobs}")


def stage_breakdown(edf: Path) -> dict[str, float]:
    """Seconds of each stage of preparing one night, in a fresh interpreter (so imports count)."""
    code = f"""
import time, json
t0 = time.perf_counter()
from pathlib import Path
import numpy as np
import sleepstage_cli.conditioning.recording as rec
import sleepstage_cli.conditioning.signals as sig
from sleepstage_cli.io.edf import EdfReader, read_header
from sleepstage_cli.io.channels import build_spec, resolve_channels
from sleepstage_cli.io.hypnogram import read_hypnogram
from sleepstage_cli.data.dataset import write_night
t = {{"import": time.perf_counter() - t0}}
acc = {{"read EDF": 0.0, "filter (FIR)": 0.0, "resample": 0.0}}
orig_read, orig_fir, orig_res = EdfReader.read, sig.zero_phase_fir, sig.resample
def timed(name, f):
    def g(*a, **k):
        s = time.perf_counter(); r = f(*a, **k); acc[name] += time.perf_counter() - s; return r
    return g
EdfReader.read = timed("read EDF", orig_read)
sig.zero_phase_fir = timed("filter (FIR)", orig_fir)
sig.resample = timed("resample", orig_res)
path = Path({str(edf)!r})
s = time.perf_counter()
header = read_header(path)
labels = {C.LABELS!r}
spec = build_spec(None, None, {{k: (v,) for k, v in labels.items()}})
channels = resolve_channels(header, spec)
hyp = read_hypnogram(path.with_suffix(".csv"))
t["header + hypnogram"] = time.perf_counter() - s
s = time.perf_counter()
with EdfReader(path, header) as r:
    cond = rec.load_conditioned(r, channels, sig.Conditioning())
total = time.perf_counter() - s
t.update(acc)
t["marks + standardise"] = total - sum(acc.values())
s = time.perf_counter()
x = cond.epochs(hyp.onsets)
miss, flat = cond.marked_fraction(hyp.onsets)
t["cut epochs + marks"] = time.perf_counter() - s
s = time.perf_counter()
import tempfile, os
with tempfile.TemporaryDirectory() as d:
    write_night(Path(d) / "n.npy", x, hyp.onsets.astype(np.float64), hyp.stages.astype(np.int8))
t["write night file"] = time.perf_counter() - s
print(json.dumps(t))
"""
    # Not run from the repository: "python -c" puts the current folder first on sys.path (see --code).
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tempfile.gettempdir())
    import json

    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one repeat of each measurement")
    ap.add_argument("--repeats", type=int, default=None, help="repeats of each measurement (default 3, quick 1)")
    ap.add_argument("--nights", type=int, default=4, help="nights of the --jobs comparison (default 4)")
    C.add_common_options(ap)
    args = ap.parse_args(argv)
    C.use_code(args.code)
    repeats = args.repeats or (1 if args.quick else 3)

    print("bench_prepare: sleepstage prepare on 8-h, 3-channel, 256-Hz nights")
    machine = C.print_machine()
    work = args.workdir / "prepare"
    nights = C.make_nights(args.workdir / "nights8h", args.nights, 8.0, seed=0)
    hours = C.edf_hours(nights[0])
    edf_mb = nights[0].stat().st_size / 2**20
    one = work / "one"
    shutil.rmtree(one, ignore_errors=True)
    one.mkdir(parents=True)
    for suffix in (".edf", ".csv"):
        (one / nights[0].with_suffix(suffix).name).symlink_to(nights[0].with_suffix(suffix))
    many = nights[0].parent

    single: C.Repeated = C.Repeated()
    jobs1, jobs2 = C.Repeated(), C.Repeated()
    loads = []
    for r in range(repeats):
        loads.append(C.wait_quiet(args.quiet_wait))
        single.runs.append(timed_prepare(one, work / "out-one", 1))
        print(f"  [{r + 1}/{repeats}] 1 night  --jobs 1: {single.runs[-1].seconds:6.1f} s  "
              f"max RSS {single.runs[-1].max_rss_mb:5.0f} MB  ({loads[-1]})")
        loads.append(C.wait_quiet(args.quiet_wait))
        jobs1.runs.append(timed_prepare(many, work / "out-j1", 1))
        print(f"  [{r + 1}/{repeats}] {args.nights} nights --jobs 1: {jobs1.runs[-1].seconds:6.1f} s  "
              f"tree RSS {jobs1.runs[-1].tree_rss_mb:5.0f} MB  ({loads[-1]})")
        loads.append(C.wait_quiet(args.quiet_wait))
        jobs2.runs.append(timed_prepare(many, work / "out-j2", 2))
        print(f"  [{r + 1}/{repeats}] {args.nights} nights --jobs 2: {jobs2.runs[-1].seconds:6.1f} s  "
              f"tree RSS {jobs2.runs[-1].tree_rss_mb:5.0f} MB  ({loads[-1]})")
    loads.append(C.load_now())

    print("  stage breakdown of one night (in-process, fresh interpreter) ...")
    stages = stage_breakdown(nights[0])

    per_night = single.median
    rate1, rate2 = args.nights / jobs1.median, args.nights / jobs2.median
    speedup = rate2 / rate1
    rows = [
        ["seconds per 8-h night (--jobs 1, whole process)",
         f"{per_night:.1f} (best {single.best:.1f}; runs {single.times()})",
         f"{hours * 3600 / per_night:.0f}x real time"],
        ["peak memory, 1 night (max RSS / tree RSS)", f"{single.max_rss:.0f} MB / {single.tree_rss:.0f} MB",
         f"{single.max_rss / edf_mb:.1f}x the {edf_mb:.0f}-MB EDF"],
        [f"{args.nights} nights --jobs 1", f"{jobs1.median:.1f} s = {rate1:.3f} nights/s (runs {jobs1.times()})",
         f"{jobs1.median / args.nights:.1f} s/night"],
        [f"{args.nights} nights --jobs 2", f"{jobs2.median:.1f} s = {rate2:.3f} nights/s (runs {jobs2.times()})",
         f"{jobs2.median / args.nights:.1f} s/night"],
        ["--jobs 2 / --jobs 1 throughput", f"{speedup:.2f}x", f"{100 * speedup / 2:.0f} % of the ideal 2x"],
        ["peak memory --jobs 2 (tree RSS, all processes)", f"{jobs2.tree_rss:.0f} MB",
         f"{jobs2.tree_rss / max(jobs1.tree_rss, 1):.2f}x --jobs 1 ({jobs1.tree_rss:.0f} MB)"],
    ]
    print()
    print(f"recording: {hours:.2f} h, 3 channels at 256 Hz, EDF {edf_mb:.0f} MB")
    print("machine before each run: " + "; ".join(loads))
    print(C.table(rows, ["measure", "figure", "ratio"]))
    print()
    total = sum(stages.values())
    print(C.table([[k, f"{v:.2f}", f"{100 * v / total:.0f} %"] for k, v in stages.items()],
                  ["stage (one night, in-process)", "seconds", "share"]))
    if args.json:
        C.save_json(args.json, {"machine": machine, "loads": loads, "hours": hours, "edf_mb": edf_mb,
                                "single": [vars(r) for r in single.runs], "jobs1": [vars(r) for r in jobs1.runs],
                                "jobs2": [vars(r) for r in jobs2.runs], "stages": stages,
                                "nights": args.nights, "speedup": speedup})
    return 0


if __name__ == "__main__":
    sys.exit(main())
