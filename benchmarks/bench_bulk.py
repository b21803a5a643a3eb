"""Benchmark of scoring nights in bulk: one ``sleepstage score FOLDER`` process against one process per night.

Ten simulated 8-h, 3-channel, 256-Hz nights (the ones bench_score.py uses, generated once, cached, never timed)
and a tiny SeqSleepNet model (bench_score.py's, cached). Two ways of scoring them, whole processes measured
from outside as in the other benchmarks:

- per night: ``sleepstage score NIGHT.edf -o out/NIGHT.csv --model tiny.pt --device cpu``, one process after
  another (what a clinic's script looping over its nights does);
- folder: ``sleepstage score nights/ -o out/ --model tiny.pt --device cpu``, one process (model loaded once,
  the next nights read and conditioned in worker processes while the network runs).

Each repeat runs both, alternating which goes first; seconds per night are the medians over repeats. The
hypnogram CSVs of both ways must be identical, byte for byte (checked every repeat; a difference ends the
benchmark). Target: folder / per night <= 0.5. A timeline of one more folder run (fresh interpreter, timers
around the package's functions in the main and the reading processes) shows where a night's time goes.

    python benchmarks/bench_bulk.py            # full: 10 nights, 3 repeats
    python benchmarks/bench_bulk.py --quick    # 4 nights, 1 repeat
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import bench_score as BS  # noqa: E402  (its tiny model)

TARGET = 0.5


def folder_of_links(folder: Path, nights: list[Path]) -> Path:
    """``folder`` holding links to the nights' EDFs only (their hypnograms stay out of the way)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for night in nights:
        (folder / night.name).symlink_to(night)
    return folder


def score_cmd(source: Path, out: Path, model: Path) -> list[str]:
    return [C.sleepstage_exe(), "score", str(source), "-o", str(out), "--model", str(model), "--device", "cpu"]


def run_per_night(nights: list[Path], out: Path, model: Path) -> tuple[float, list[C.ProcRun]]:
    """One score process per night, one after another; wall seconds of the whole loop and each run."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    runs = []
    t0 = time.perf_counter()
    for night in nights:
        runs.append(C.check(C.run_process(score_cmd(night, out / f"{night.stem}.csv", model)), "score, one night"))
    return time.perf_counter() - t0, runs


def run_folder(folder: Path, out: Path, model: Path) -> C.ProcRun:
    shutil.rmtree(out, ignore_errors=True)  # else the nights scored last time would be kept, not scored
    return C.check(C.run_process(score_cmd(folder, out, model)), "score, folder")


def compare_csvs(nights: list[Path], a: Path, b: Path) -> list[str]:
    """Nights whose hypnogram CSV differs (or is missing) between the two output folders."""
    bad = []
    for night in nights:
        fa, fb = a / f"{night.stem}.csv", b / f"{night.stem}.csv"
        if not (fa.exists() and fb.exists() and fa.read_bytes() == fb.read_bytes()):
            bad.append(night.stem)
    return bad


# One folder run in a fresh interpreter with timers around the package's functions. Wrappers are put in
# place as each module is imported (an import hook), so that nothing is loaded earlier than in the real
# command (numpy's threads are chosen when it loads); the reading processes are forked from this one and
# inherit them. Each call prints "EV pid name start end" (wall clock, shared by the processes).
TIMELINE_CODE = r"""
import builtins, functools, os, sys, time
T0 = time.time()
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as sleepstage's main() does
def log(name, t0, t1):
    print(f"EV {os.getpid()} {name} {t0 - T0:.4f} {t1 - T0:.4f}", file=sys.stderr, flush=True)
def wrap(owner, name, label):
    f = getattr(owner, name, None)
    if f is None:
        return
    @functools.wraps(f)
    def g(*a, **k):
        s = time.time()
        try:
            return f(*a, **k)
        finally:
            log(label, s, time.time())
    setattr(owner, name, g)
def iter_logged(it):
    @functools.wraps(it)
    def g(self):
        for item in it(self):
            t = time.time()
            log("handed", t, t)
            yield item
    return g
WATCH = {
    "sleepstage_cli.scoring.pipeline": lambda m: (wrap(m, "read_night", "read"), wrap(m, "check_fit", "fit"),
                                                  wrap(m, "score_read_night", "score_read"),
                                                  setattr(m.ReadAhead, "__iter__", iter_logged(m.ReadAhead.__iter__))),
    "sleepstage_cli.scoring.inference": lambda m: (wrap(m, "encode_night", "encode"), wrap(m, "score_night", "net")),
    "sleepstage_cli.cli.commands.score": lambda m: (wrap(m, "_score_one", "score_one"), wrap(m, "_analyse", "stats"),
                                                    wrap(m, "_write_night", "write")),
    "sleepstage_cli.model.modelfile": lambda m: wrap(m, "load_model", "load_model"),
}
def wrap_loaded():
    for key in [w for w in WATCH if w in sys.modules]:
        mod = sys.modules[key]
        if not getattr(getattr(mod, "__spec__", None), "_initializing", False):  # fully imported
            WATCH.pop(key)(mod)
_import = builtins.__import__
def hooked(name, *a, **k):
    mod = _import(name, *a, **k)
    if WATCH:
        wrap_loaded()
    return mod
builtins.__import__ = hooked
import sleepstage_cli.cli.main as cli
wrap_loaded()
sys.argv = ["sleepstage"] + sys.argv[1:]
if __name__ == "__main__":
    try:
        cli.app()  # not cli.main(): it leaves through os._exit
    except SystemExit as e:
        if e.code:
            raise
    t = time.time()
    log("end", t, t)
"""


def timeline(folder: Path, out: Path, model: Path) -> dict:
    """Where a folder run's time goes: startup, per night in the main process and in the readers, finish."""
    shutil.rmtree(out, ignore_errors=True)
    res = subprocess.run([sys.executable, "-c", TIMELINE_CODE, *score_cmd(folder, out, model)[1:]],
                         capture_output=True, text=True, cwd=tempfile.gettempdir())
    if res.returncode != 0:
        raise SystemExit(f"timeline run failed:\n{res.stderr[-2000:]}")
    events = []
    for line in res.stderr.splitlines():
        if line.startswith("EV "):
            _, pid, name, t0, t1 = line.split(" ", 4)
            events.append((int(pid), name, float(t0), float(t1)))
    main_pid = next(pid for pid, name, *_ in events if name == "end")
    mine = [e for e in events if e[0] == main_pid]
    reads = [e for e in events if e[1] == "read" and e[0] != main_pid]

    def total(name: str) -> float:
        return sum(t1 - t0 for _, n, t0, t1 in mine if n == name)

    n = len([e for e in mine if e[1] == "score_one"])
    handed = [t0 for _, name, t0, _ in mine if name == "handed"]
    last_done = max(t1 for _, name, _, t1 in mine if name == "score_one")
    end = next(t0 for _, name, t0, _ in mine if name == "end")
    steady = last_done - handed[0]
    parts = {
        "network, epoch level (front end + encoder)": total("encode") / n,
        "network, sequence level + aggregation": (total("net") - total("encode")) / n,
        "fit check": total("fit") / n,
        "flags, notes": (total("score_read") - total("net") - total("fit")) / n,
        "statistics, sleep period": total("stats") / n,
        "writing CSV + HTML report": total("write") / n,
        "rest (summary row, fit verdict, printing)": (total("score_one") - total("score_read") - total("stats")
                                                      - total("write")) / n,
    }
    busy = total("score_one") / n
    return {
        "nights": n, "readers": len({e[0] for e in reads}), "wall": end, "startup": handed[0],
        "finish": end - last_done, "steady_per_night": steady / n, "main_busy_per_night": busy,
        "main_waiting_per_night": (steady - total("score_one")) / n,
        "read_per_night": statistics.mean(t1 - t0 for *_, t0, t1 in reads) if reads else float("nan"),
        "main": parts,
    }


def print_timeline(tl: dict) -> None:
    n = tl["nights"]
    print(f"timeline of one folder run, {n} nights, {tl['readers']} reading process(es): {tl['wall']:.2f} s "
          f"= {tl['wall'] / n:.2f} s per night")
    rows = [["start-up: imports, model, first night read (until it reaches the network)", f"{tl['startup']:.2f}", ""],
            ["per night, steady state (first night handed over -> last written) / nights",
             f"{tl['steady_per_night']:.3f}", "100 %"]]
    per = tl["steady_per_night"]
    rows += [[f"  main process: {k}", f"{v:.3f}", f"{100 * v / per:.0f} %"] for k, v in tl["main"].items()]
    rows.append(["  main process: waiting for the next night to be read", f"{tl['main_waiting_per_night']:.3f}",
                 f"{100 * tl['main_waiting_per_night'] / per:.0f} %"])
    rows.append([f"  each reading process: read + condition one night (side by side: {tl['readers']})",
                 f"{tl['read_per_night']:.3f}", ""])
    rows.append(["finish (last night written -> exit)", f"{tl['finish']:.2f}", ""])
    print(C.table(rows, ["folder run", "seconds", "share"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 nights, one repeat")
    ap.add_argument("--nights", type=int, default=None, help="nights (default 10, quick 4)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats (default 3, quick 1)")
    ap.add_argument("--no-timeline", action="store_true", help="skip the timeline of a folder run")
    C.add_common_options(ap)
    args = ap.parse_args(argv)
    C.use_code(args.code)
    n_nights = args.nights or (4 if args.quick else 10)
    repeats = args.repeats or (1 if args.quick else 3)

    print(f"bench_bulk: {n_nights} nights of 8 h, one score process per night vs one folder run")
    machine = C.print_machine()
    work = args.workdir / "bulk"
    work.mkdir(parents=True, exist_ok=True)
    nights = C.make_nights(args.workdir / "nights8h", n_nights, 8.0, seed=0)[:n_nights]
    model = BS.ensure_model(args.workdir / "score", nights[0])
    folder = folder_of_links(work / "nights", nights)
    out_a, out_b = work / "out-per-night", work / "out-folder"
    hours = sum(C.edf_hours(p) for p in nights)

    per_night: list[float] = []
    per_night_runs: list[C.ProcRun] = []
    folder_runs: list[C.ProcRun] = []
    loads = []
    for r in range(repeats):
        order = ("per night", "folder") if r % 2 == 0 else ("folder", "per night")
        for mode in order:
            loads.append(C.wait_quiet(args.quiet_wait))
            if mode == "per night":
                seconds, runs = run_per_night(nights, out_a, model)
                per_night.append(seconds)
                per_night_runs.extend(runs)
                print(f"  [{r + 1}/{repeats}] per night: {seconds:6.1f} s = {seconds / n_nights:5.2f} s/night "
                      f"(runs {min(x.seconds for x in runs):.1f}-{max(x.seconds for x in runs):.1f} s)  ({loads[-1]})")
            else:
                folder_runs.append(run_folder(folder, out_b, model))
                s = folder_runs[-1].seconds
                print(f"  [{r + 1}/{repeats}] folder:    {s:6.1f} s = {s / n_nights:5.2f} s/night  ({loads[-1]})")
        different = compare_csvs(nights, out_a, out_b)
        if different:
            raise SystemExit(f"the hypnogram CSVs of the two ways differ for {', '.join(different)}: "
                             f"compare {out_a} and {out_b}")
    loads.append(C.load_now())
    tl = None
    if not args.no_timeline:
        print("  timeline of one more folder run ...")
        loads.append(C.wait_quiet(args.quiet_wait))
        tl = timeline(folder, work / "out-timeline", model)
        if compare_csvs(nights, out_a, work / "out-timeline"):
            raise SystemExit("the timeline run's hypnogram CSVs differ from the per-night ones")

    a = statistics.median(per_night) / n_nights
    b = statistics.median(x.seconds for x in folder_runs) / n_nights
    a_best, b_best = min(per_night) / n_nights, min(x.seconds for x in folder_runs) / n_nights
    paired = [f.seconds / p for f, p in zip(folder_runs, per_night)]
    print()
    print(f"nights: {n_nights} x {hours / n_nights:.2f} h, 3 channels at 256 Hz; tiny SeqSleepNet (L=20), CPU")
    print("machine before each run: " + "; ".join(loads))
    print(C.table([
        ["one process per night", f"{a:.2f} (best {a_best:.2f}; {', '.join(f'{s / n_nights:.2f}' for s in per_night)})",
         f"{max(x.max_rss_mb for x in per_night_runs):.0f} / {max(x.tree_rss_mb for x in per_night_runs):.0f}"],
        ["one folder process", f"{b:.2f} (best {b_best:.2f}; "
                               f"{', '.join(f'{x.seconds / n_nights:.2f}' for x in folder_runs)})",
         f"{max(x.max_rss_mb for x in folder_runs):.0f} / {max(x.tree_rss_mb for x in folder_runs):.0f}"],
    ], ["way", "seconds per night: median (best; runs)", "peak MB: max RSS / tree RSS"]))
    print(f"hypnogram CSVs identical in both ways: yes ({n_nights} of {n_nights} nights, every repeat)")
    print()
    ratio = b / a
    print(C.table([["folder / per night, seconds per night", f"{ratio:.2f} (best/best {b_best / a_best:.2f}; "
                    f"paired {', '.join(f'{p:.2f}' for p in paired)})", f"<= {TARGET}", C.verdict(ratio <= TARGET)]],
                  ["target", "figure", "required", "verdict"]))
    if tl:
        print()
        print_timeline(tl)
    if args.json:
        C.save_json(args.json, {"machine": machine, "loads": loads, "nights": n_nights, "hours": hours,
                                "per_night_loops": per_night, "per_night_runs": [vars(x) for x in per_night_runs],
                                "folder_runs": [vars(x) for x in folder_runs], "ratio": ratio,
                                "timeline": tl})
    return 0


if __name__ == "__main__":
    sys.exit(main())
