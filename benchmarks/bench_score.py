"""Benchmark of ``sleepstage score`` against YASA on the same 8-h, 3-channel, 256-Hz EDF; 24-h peak memory.

Whole processes, measured from outside (start to CSV + HTML report written; for YASA start to CSV written):
wall time with ``time.perf_counter``, peak memory as ru_maxrss reported by ``/usr/bin/time -f %M`` (the
largest single process) and as the peak summed RSS of the process tree (psutil, 20-ms polling). sleepstage, YASA and the
24-h run alternate, repeat after repeat, so that a change of machine load affects all of them alike.

Targets: sleepstage at most 1/4 of YASA's whole-process time; peak memory under 1 GB (8 h); 24-h peak
memory at most twice the 8-h one. The model is a tiny SeqSleepNet (L=20, 3 channels) trained for 2 steps on
the simulated night (scoring cost does not depend on training). A stage breakdown of one sleepstage run
(fresh interpreter, the CLI's own code path, timers wrapped around its functions) and of one YASA run follows.

    python benchmarks/bench_score.py            # full: 3 repeats
    python benchmarks/bench_score.py --quick    # 1 repeat
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

YASA_SCRIPT = C.BENCH_DIR / "_yasa_score.py"
GB = 1024.0  # MB


def ensure_model(work: Path, night: Path) -> Path:
    """A tiny SeqSleepNet model file trained for 2 steps on the night (cached)."""
    model = work / "tiny-seqsleepnet.pt"
    if model.exists() and model.stat().st_mtime > night.stat().st_mtime:
        return model
    t0 = time.perf_counter()
    src = work / "model-src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for suffix in (".edf", ".csv"):
        (src / night.with_suffix(suffix).name).symlink_to(night.with_suffix(suffix))
    ds = work / "model-dataset"
    exe = C.sleepstage_exe()
    subprocess.run([exe, "prepare", str(src), "-o", str(ds), "--layout", "generic", *C.CHANNEL_ARGS, "--jobs", "1",
                    "--force", "--strict"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([exe, "train", str(ds), "-o", str(model), "--model", "seqsleepnet", "--seq-len", "20",
                    "--max-steps", "2", "--epochs", "1", "--val-fraction", "0", "--device", "cpu", "--force"],
                   check=True, stdout=subprocess.DEVNULL)
    print(f"  trained a tiny model {model} ({time.perf_counter() - t0:.0f} s, not timed)")
    return model


def score_cmd(edf: Path, out: Path, model: Path) -> list[str]:
    return [C.sleepstage_exe(), "score", str(edf), "-o", str(out), "--model", str(model), "--device", "cpu", "--force"]


def yasa_cmd(edf: Path, out: Path, stages: bool = False) -> list[str]:
    return [sys.executable, str(YASA_SCRIPT), str(edf), str(out), "--eeg", C.LABELS["eeg"], "--eog", C.LABELS["eog"],
            "--emg", C.LABELS["emg"]] + (["--stages"] if stages else [])


def run_score(edf: Path, out: Path, model: Path, env: dict | None = None) -> C.ProcRun:
    for p in out.parent.glob(out.stem + "*"):
        p.unlink()
    run = C.check(C.run_process(score_cmd(edf, out, model), env=env), "sleepstage score")
    if not out.exists() or not out.with_name(out.stem + ".report.html").exists():
        raise SystemExit(f"sleepstage score wrote no CSV or report for {edf}")
    return run


def run_yasa(edf: Path, out: Path) -> C.ProcRun:
    out.unlink(missing_ok=True)
    run = C.check(C.run_process(yasa_cmd(edf, out)), "YASA")
    if not out.exists():
        raise SystemExit("the YASA run wrote no CSV")
    return run


STAGES_CODE = r"""
import json, sys, time
T0 = time.perf_counter()
import sleepstage_cli.cli.main as cli
import sleepstage_cli.cli.commands.score, sleepstage_cli.model.modelfile
import sleepstage_cli.scoring.pipeline, sleepstage_cli.scoring.inference
import sleepstage_cli.conditioning.recording, sleepstage_cli.conditioning.signals
import sleepstage_cli.report.html, sleepstage_cli.io.export
import sleepstage_cli.evaluation.sleepstats, sleepstage_cli.io.edf, pyedflib, torch
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024.0
acc = {"import": time.perf_counter() - T0}
mem = {"import": hwm()}
def wrap(mod, name, label):
    f = getattr(mod, name)
    def g(*a, **k):
        s = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            acc[label] = acc.get(label, 0.0) + time.perf_counter() - s
            mem[label] = hwm()
    setattr(mod, name, g)
M = sys.modules
wrap(M["sleepstage_cli.model.modelfile"], "load_model", "load model file")
wrap(M["sleepstage_cli.io.edf"].EdfReader, "read", "read EDF (pyedflib)")
wrap(M["sleepstage_cli.conditioning.signals"], "zero_phase_fir", "filter (FIR)")
wrap(M["sleepstage_cli.conditioning.signals"], "resample", "resample to 100 Hz")
wrap(M["sleepstage_cli.scoring.pipeline"], "load_conditioned", "_conditioning total")
wrap(M["sleepstage_cli.scoring.pipeline"], "read_night", "_read_night total")
wrap(M["sleepstage_cli.scoring.inference"], "score_night", "_score_night total")
wrap(M["sleepstage_cli.scoring.inference"], "encode_night", "_encode total")
wrap(M["sleepstage_cli.cli.commands.score"], "_score_one", "_score_one total")
# The real command reads the night in a worker process while torch loads; here it is read in this
# process, one stage after the other, so that every stage is timed (and the stages add up to more).
class InProcess:
    def __init__(self, paths, spec, cond, epochs_from=None, depth=None, readers=None):
        self.items = [(p, spec, cond, (epochs_from or {}).get(p)) for p in paths]
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        pass
    def __iter__(self):
        from sleepstage_cli.io.layout import night_key
        for p, spec, cond, ef in self.items:
            yield p, M["sleepstage_cli.scoring.pipeline"].read_night(p, spec, cond, night_key(p), ef)
M["sleepstage_cli.scoring.pipeline"].ReadAhead = InProcess
wrap(M["sleepstage_cli.io.export"], "write_csv", "write CSV")
wrap(M["sleepstage_cli.report.html"], "night_report_html", "report HTML (plots)")
wrap(M["sleepstage_cli.report.html"], "write_report", "report write")
orig_load = M["sleepstage_cli.model.modelfile"].load_model
def load_and_hook(*a, **k):
    lm = orig_load(*a, **k)
    m = lm.model
    def start(*_):
        acc["_fe0"] = time.perf_counter()
    def stop(*_):
        key = "front end (STFT + normalise)"
        acc[key] = acc.get(key, 0.0) + time.perf_counter() - acc["_fe0"]
    m.frontend.register_forward_pre_hook(start)
    m.normalizer.register_forward_hook(stop)
    return lm
M["sleepstage_cli.model.modelfile"].load_model = load_and_hook
sys.argv = ["sleepstage"] + sys.argv[1:]
T1 = time.perf_counter()
try:
    cli.app()  # not cli.main(): it leaves through os._exit, before this script could report
except SystemExit as e:
    if e.code:
        raise
acc["_main"] = time.perf_counter() - T1
acc["_total"] = time.perf_counter() - T0
mem["_total"] = hwm()
print("STAGES " + json.dumps(acc), file=sys.stderr)
print("MEMORY " + json.dumps(mem), file=sys.stderr)
"""


def sleepstage_stages(edf: Path, out: Path, model: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds per stage of one sleepstage score run (fresh interpreter, the CLI's code path), and the
    process's peak RSS (VmHWM, MB) after each step."""
    for p in out.parent.glob(out.stem + "*"):
        p.unlink()
    # Not run from the repository: "python -c" puts the current folder first on sys.path (see --code).
    res = subprocess.run([sys.executable, "-c", STAGES_CODE, *score_cmd(edf, out, model)[1:]],
                         capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
    raw = json.loads(next(line for line in res.stderr.splitlines() if line.startswith("STAGES "))[7:])
    mem = json.loads(next(line for line in res.stderr.splitlines() if line.startswith("MEMORY "))[7:])
    fe = raw.get("front end (STFT + normalise)", 0.0)
    cond = raw["_conditioning total"]
    parts = {
        "import (torch, numpy, pyedflib, ... )": raw["import"],
        "load model file": raw["load model file"],
        "read EDF (pyedflib)": raw["read EDF (pyedflib)"],
        "filter (FIR)": raw["filter (FIR)"],
        "resample to 100 Hz": raw["resample to 100 Hz"],
        "marks + standardise": cond - raw["read EDF (pyedflib)"] - raw["filter (FIR)"] - raw["resample to 100 Hz"],
        "cut epochs, flags": raw["_read_night total"] - cond,
        "front end (STFT + normalise)": fe,
        "network, epoch level (filterbank, GRU, attention)": raw["_encode total"] - fe,
        "network, sequence level + aggregation": raw["_score_night total"] - raw["_encode total"],
        "write CSV": raw["write CSV"],
        "report HTML (SVG plot) + write": raw["report HTML (plots)"] + raw["report write"],
    }
    parts["rest of the CLI (arguments, statistics, printing)"] = raw["_total"] - sum(parts.values())
    parts["_total"] = raw["_total"]
    # Peak RSS of the process (VmHWM) once each step is done: where the high-water mark is set.
    marks = {"imports done": mem["import"], "model loaded": mem.get("load model file", 0.0),
             "after reading + conditioning": mem["_conditioning total"],
             "after scoring (front end + network)": mem["_score_night total"],
             "after CSV + report": mem["_total"]}
    return parts, marks


def yasa_stages(edf: Path, out: Path) -> dict[str, float]:
    res = subprocess.run(yasa_cmd(edf, out, stages=True), capture_output=True, text=True, check=True)
    line = next(ln for ln in res.stderr.splitlines() if ln.startswith("import "))
    words = line.split()
    return {words[i]: float(words[i + 1]) for i in range(0, len(words), 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one repeat")
    ap.add_argument("--repeats", type=int, default=None, help="repeats (default 3, quick 1)")
    ap.add_argument("--long-hours", type=float, default=24.0, help="length of the long recording (default 24)")
    ap.add_argument("--no-yasa", action="store_true", help="skip YASA")
    ap.add_argument("--threads-check", action="store_true",
                    help="also score the 8-h night with OMP_NUM_THREADS=1 and with OMP_WAIT_POLICY=ACTIVE (the "
                         "CLI's default is PASSIVE), alternating with default runs (diagnoses CPU "
                         "oversubscription on a busy machine)")
    C.add_common_options(ap)
    args = ap.parse_args(argv)
    C.use_code(args.code)
    repeats = args.repeats or (1 if args.quick else 3)

    print("bench_score: sleepstage score vs YASA SleepStaging, 3-channel 256-Hz EDF")
    machine = C.print_machine()
    work = args.workdir / "score"
    work.mkdir(parents=True, exist_ok=True)
    night = C.make_nights(args.workdir / "nights8h", 1, 8.0, seed=0)[0]
    long_edf = C.make_long_recording(work / f"long{args.long_hours:g}h.edf", args.long_hours,
                                     args.workdir / "nights8h")
    model = ensure_model(work, night)
    h8, hlong = C.edf_hours(night), C.edf_hours(long_edf)
    out = work / "out"
    out.mkdir(exist_ok=True)

    ss8, ya8, ss24 = C.Repeated(), C.Repeated(), C.Repeated()
    loads = []
    for r in range(repeats):
        loads.append(C.wait_quiet(args.quiet_wait))
        ss8.runs.append(run_score(night, out / "night8h.csv", model))
        print(f"  [{r + 1}/{repeats}] sleepstage {h8:.1f} h: {ss8.runs[-1].seconds:6.1f} s, "
              f"max RSS {ss8.runs[-1].max_rss_mb:5.0f} MB  ({loads[-1]})")
        if not args.no_yasa:
            loads.append(C.wait_quiet(args.quiet_wait))
            ya8.runs.append(run_yasa(night, out / "yasa8h.csv"))
            print(f"  [{r + 1}/{repeats}] YASA       {h8:.1f} h: {ya8.runs[-1].seconds:6.1f} s, "
                  f"max RSS {ya8.runs[-1].max_rss_mb:5.0f} MB  ({loads[-1]})")
        loads.append(C.wait_quiet(args.quiet_wait))
        ss24.runs.append(run_score(long_edf, out / "long.csv", model))
        print(f"  [{r + 1}/{repeats}] sleepstage {hlong:.1f} h: {ss24.runs[-1].seconds:6.1f} s, "
              f"max RSS {ss24.runs[-1].max_rss_mb:5.0f} MB  ({loads[-1]})")
    loads.append(C.load_now())
    variants: dict[str, C.Repeated] = {}
    if args.threads_check:
        # The same 8-h run under other OpenMP settings, alternating with a default run each time.
        default = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
        settings = {"default (2 threads, PASSIVE)": default,
                    "OMP_NUM_THREADS=1": dict(default, OMP_NUM_THREADS="1"),
                    "OMP_WAIT_POLICY=ACTIVE": dict(default, OMP_WAIT_POLICY="ACTIVE")}
        variants = {k: C.Repeated() for k in settings}
        for r in range(repeats):
            for name, extra in settings.items():
                C.wait_quiet(args.quiet_wait)
                variants[name].runs.append(run_score(night, out / "night8h-omp.csv", model, env=extra))
            print(f"  [{r + 1}/{repeats}] threads check: " + ", ".join(
                f"{k} {v.runs[-1].seconds:.1f} s" for k, v in variants.items()) + f" (load {C.load_now()})")

    print("  stage breakdown (one more run of each) ...")
    loads.append(C.wait_quiet(args.quiet_wait))
    stages, marks8 = sleepstage_stages(night, out / "stages8h.csv", model)
    _, marks_long = sleepstage_stages(long_edf, out / "stageslong.csv", model)
    ystages = None if args.no_yasa else yasa_stages(night, out / "yasa-stages.csv")
    loads.append(C.load_now())

    rows = [["sleepstage score, 8 h", f"{ss8.median:.1f} (best {ss8.best:.1f}; {ss8.times()})",
             f"{ss8.max_rss:.0f} / {ss8.tree_rss:.0f}"]]
    verdicts = []
    if ya8.runs:
        rows.append(["YASA SleepStaging, 8 h", f"{ya8.median:.1f} (best {ya8.best:.1f}; {ya8.times()})",
                     f"{ya8.max_rss:.0f} / {ya8.tree_rss:.0f}"])
    rows.append([f"sleepstage score, {hlong:.0f} h", f"{ss24.median:.1f} (best {ss24.best:.1f}; {ss24.times()})",
                 f"{ss24.max_rss:.0f} / {ss24.tree_rss:.0f}"])
    for name, rep in variants.items():
        rows.append([f"sleepstage score, 8 h, {name}", f"{rep.median:.1f} (best {rep.best:.1f}; {rep.times()})",
                     f"{rep.max_rss:.0f} / {rep.tree_rss:.0f}"])
    print()
    print(f"recordings: {h8:.2f} h and {hlong:.2f} h, 3 channels at 256 Hz")
    print("machine before each run: " + "; ".join(loads))
    print(C.table(rows, ["whole process", "seconds: median (best; runs)", "peak MB: max RSS / tree RSS"]))
    print()
    if ya8.runs:
        ratio, ratio_best = ss8.median / ya8.median, ss8.best / ya8.best
        verdicts.append(["time sleepstage / YASA (8 h)", f"{ratio:.2f} (best/best {ratio_best:.2f})", "<= 0.25",
                         C.verdict(ratio <= 0.25)])
    mem8 = max(ss8.max_rss, ss8.tree_rss)
    mem24 = max(ss24.max_rss, ss24.tree_rss)
    verdicts.append(["peak memory sleepstage 8 h", f"{mem8:.0f} MB = {mem8 / GB:.2f} GB", "< 1 GB",
                     C.verdict(mem8 < GB)])
    verdicts.append([f"peak memory {hlong:.0f} h / 8 h", f"{mem24 / mem8:.2f} ({mem24:.0f} MB)", "<= 2",
                     C.verdict(mem24 / mem8 <= 2)])
    print(C.table(verdicts, ["target", "figure", "required", "verdict"]))
    print()
    total = stages.pop("_total")
    print(C.table([[k, f"{v:.2f}", f"{100 * v / total:.0f} %"] for k, v in stages.items()] +
                  [["total (in-process)", f"{total:.2f}", "100 %"]],
                  ["sleepstage score stage (8 h)", "seconds", "share"]))
    print()
    print(C.table([[k, f"{v:.0f}", f"{marks_long[k]:.0f}"] for k, v in marks8.items()],
                  ["peak RSS (VmHWM) of sleepstage score once ...", f"{h8:.0f} h, MB", f"{hlong:.0f} h, MB"]))
    if ystages:
        print()
        ytotal = sum(ystages.values())
        print(C.table([[k, f"{v:.2f}", f"{100 * v / ytotal:.0f} %"] for k, v in ystages.items()],
                      ["YASA stage (8 h)", "seconds", "share"]))
    if args.json:
        C.save_json(args.json, {"machine": machine, "loads": loads, "hours": [h8, hlong],
                                "sleepstage_8h": [vars(r) for r in ss8.runs], "yasa_8h": [vars(r) for r in ya8.runs],
                                "sleepstage_long": [vars(r) for r in ss24.runs],
                                "threads_check": {k: [vars(r) for r in v.runs] for k, v in variants.items()},
                                "stages": stages, "yasa_stages": ystages, "memory_marks": [marks8, marks_long]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
