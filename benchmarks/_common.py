"""Shared helpers of the benchmarks: test data, whole-process measurement, machine description, tables.

Not a benchmark itself. Data are generated with ``sleepstage_cli.simulate`` (MASS layout, 256 Hz) and
rewritten as 3-channel EDFs (EEG C4-A1, EOG R-L, EMG chin) with a generic CSV hypnogram beside each; they
are cached in the work folder so that repeated runs skip generation, and generation is never timed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_WORKDIR = Path(os.environ.get("SLEEPSTAGE_BENCH_DIR", Path(tempfile.gettempdir()) / "sleepstage-bench"))
RATE = 256
LABELS = {"eeg": "EEG C4-A1", "eog": "EOG R-L", "emg": "EMG Chin1-Chin2"}
# Physical ranges (µV) of the derived channels written to the 3-channel EDF.
RANGES = {"eeg": 2000.0, "eog": 4000.0, "emg": 2000.0}
STAGE_TEXT = {0: "W", 1: "N1", 2: "N2", 3: "N3", 4: "R", -1: "?"}
CHANNEL_ARGS = ["--eeg", LABELS["eeg"], "--eog", LABELS["eog"], "--emg", LABELS["emg"]]


def use_code(path: Path | None) -> None:
    """Benchmark the package in ``path`` (a folder holding ``sleepstage_cli/``, e.g. a ``git archive`` of a
    commit) instead of the installed one: put it first on ``sys.path`` here and on ``PYTHONPATH`` for every
    process started from here (the editable install's own path entry comes later)."""
    if path is None:
        return
    path = Path(path).resolve()
    if not (path / "sleepstage_cli" / "__init__.py").exists():
        raise SystemExit(f"--code {path}: no sleepstage_cli package there")
    sys.path.insert(0, str(path))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(path)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    for name in [m for m in sys.modules if m == "sleepstage_cli" or m.startswith("sleepstage_cli.")]:
        del sys.modules[name]


def code_note() -> str:
    """Which sleepstage_cli the benchmark runs (path, and the git commit when it is a checkout)."""
    import sleepstage_cli

    where = Path(sleepstage_cli.__file__).resolve().parent.parent
    note = str(where)
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--", "sleepstage_cli"],
                               capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            changed = len([ln for ln in dirty.stdout.splitlines() if ln.strip()])
            note += f" (commit {head.stdout.strip()}" + (f", {changed} uncommitted change(s) in sleepstage_cli)"
                                                         if changed else ", clean)")
    except (OSError, subprocess.SubprocessError):
        pass
    return note


def sleepstage_exe() -> str:
    """The ``sleepstage`` entry point of the running interpreter's environment."""
    exe = Path(sys.executable).with_name("sleepstage")
    return str(exe) if exe.exists() else (shutil.which("sleepstage") or "sleepstage")


# --------------------------------------------------------------------------------------------- data

def _derive_mass(psg: Path) -> dict[str, np.ndarray]:
    """C4-A1, EOG right-left and chin1-chin2 (µV, 256 Hz) from a simulated MASS PSG file."""
    import pyedflib

    with pyedflib.EdfReader(str(psg)) as r:
        idx = {lab: i for i, lab in enumerate(r.getSignalLabels())}

        def sig(label: str) -> np.ndarray:
            if r.getSampleFrequency(idx[label]) != RATE:
                raise RuntimeError(f"{label} is not at {RATE} Hz")
            return r.readSignal(idx[label])

        return {"eeg": sig("EEG C4-CLE") - sig("EEG A1-CLE"),
                "eog": sig("EOG Right Horiz") - sig("EOG Left Horiz"),
                "emg": sig("EMG Chin1") - sig("EMG Chin2")}


def write_3ch_edf(path: Path, data: dict[str, np.ndarray], start: dt.datetime | None = None) -> None:
    """Write the three derived channels (whole seconds) as a 16-bit EDF at 256 Hz with 1-s records.

    Written here with pyedflib directly (not through sleepstage's own writer) so that the test files do not
    change when the package does.
    """
    import pyedflib

    n = min(v.size for v in data.values()) // RATE * RATE
    digital = []
    for k in ("eeg", "eog", "emg"):
        lim = RANGES[k]
        y = np.rint((np.asarray(data[k][:n], np.float64) + lim) * (65535.0 / (2 * lim)) - 32768.0)
        digital.append(np.clip(y, -32768, 32767).astype(np.int16))
    tmp = path.with_name("." + path.name + ".tmp")
    w = pyedflib.EdfWriter(str(tmp), 3, file_type=pyedflib.FILETYPE_EDF)
    try:
        w.setStartdatetime(start or dt.datetime(2020, 1, 1, 22, 0, 0))
        w.setPatientCode("bench")
        w.setSignalHeaders([{"label": LABELS[k], "dimension": "uV", "sample_frequency": RATE,
                             "physical_min": -RANGES[k], "physical_max": RANGES[k],
                             "digital_min": -32768, "digital_max": 32767, "transducer": "", "prefilter": ""}
                            for k in ("eeg", "eog", "emg")])
        block = 600  # records (seconds) interleaved at a time
        for first in range(0, n // RATE, block):
            last = min(n // RATE, first + block)
            rows = np.concatenate([d[first * RATE:last * RATE].reshape(last - first, RATE) for d in digital], axis=1)
            for row in rows:
                if w.blockWriteDigitalShortSamples(np.ascontiguousarray(row)) < 0:
                    raise OSError(f"pyedflib could not write {path}")
    finally:
        w.close()
    os.replace(tmp, path)


def read_3ch_edf(path: Path) -> dict[str, np.ndarray]:
    """The three channels (µV) of a file written by :func:`write_3ch_edf`."""
    import pyedflib

    with pyedflib.EdfReader(str(path)) as r:
        labels = r.getSignalLabels()
        return {k: r.readSignal(labels.index(LABELS[k])) for k in ("eeg", "eog", "emg")}


def _write_csv_hypnogram(path: Path, onsets: list[float], stages: list[int], epoch: float) -> None:
    lines = ["onset,duration,stage"] + [f"{o:.2f},{epoch:g},{STAGE_TEXT[int(s)]}" for o, s in zip(onsets, stages)]
    path.write_text("\n".join(lines) + "\n")


def _simulate_mass(tmp: Path, n: int, hours: float, seed: int) -> list[dict]:
    from sleepstage_cli.simulate import simulate

    nights = simulate(tmp, n, layout="mass", seed=seed, hours=hours)
    return [{"psg": nt.psg, "onsets": nt.onsets, "stages": nt.stages, "epoch": nt.epoch_length} for nt in nights]


def make_nights(folder: Path, n: int, hours: float = 8.0, seed: int = 0, log=print) -> list[Path]:
    """``n`` 3-channel 256-Hz EDF nights ``subjectNN_night1.edf`` with CSV hypnograms (cached in ``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / "nights.json"
    want = {"n": n, "hours": hours, "seed": seed, "version": 1}
    paths = [folder / f"subject{i + 1:02d}_night1.edf" for i in range(n)]
    if stamp.exists() and all(p.exists() for p in paths):
        have = json.loads(stamp.read_text())
        # Night i depends only on (seed, i, hours): a cache of more nights holds these ones too.
        if have.get("n", 0) >= n and {k: v for k, v in have.items() if k != "n"} == \
                {k: v for k, v in want.items() if k != "n"}:
            return paths
    for p in folder.iterdir():
        if p.is_file():
            p.unlink()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        for i, path in enumerate(paths):
            # One MASS night per call keeps memory flat; each gets its own seed (and subject profile).
            sim = _simulate_mass(Path(tmp) / str(i), 1, hours, seed * 1000 + i)[0]
            write_3ch_edf(path, _derive_mass(sim["psg"]))
            _write_csv_hypnogram(path.with_suffix(".csv"), sim["onsets"], sim["stages"], sim["epoch"])
            shutil.rmtree(Path(tmp) / str(i))
    stamp.write_text(json.dumps(want))
    log(f"  generated {n} night(s) of {hours:g} h in {folder} ({time.perf_counter() - t0:.0f} s, not timed)")
    return paths


def make_long_recording(path: Path, hours: float, nights_dir: Path, log=print) -> Path:
    """A 3-channel recording of ``hours`` (e.g. 24): simulated 8-h nights of ``nights_dir`` back to back,
    cut to exactly ``hours`` (cached)."""
    n_nights = int(np.ceil(hours / 8.0 - 1e-9))
    sources = make_nights(nights_dir, n_nights, 8.0, seed=0, log=log)
    stamp = path.with_suffix(".json")
    want = {"hours": hours, "sources": [str(p) for p in sources], "version": 2}
    if path.exists() and stamp.exists() and json.loads(stamp.read_text()) == want:
        return path
    t0 = time.perf_counter()
    parts = [read_3ch_edf(p) for p in sources]
    need = int(round(hours * 3600)) * RATE
    data = {k: np.concatenate([p[k] for p in parts])[:need] for k in ("eeg", "eog", "emg")}
    if data["eeg"].size < need:
        raise RuntimeError(f"the nights of {nights_dir} add up to less than {hours:g} h")
    del parts
    write_3ch_edf(path, data)
    stamp.write_text(json.dumps(want))
    log(f"  made a {hours:g}-h recording {path.name} from {n_nights} simulated nights "
        f"({time.perf_counter() - t0:.0f} s, not timed)")
    return path


def edf_hours(path: Path) -> float:
    from sleepstage_cli.io.edf import read_header

    return read_header(path).duration / 3600.0


# --------------------------------------------------------------------------------- process measurement

@dataclass
class ProcRun:
    """One whole-process run: wall time, peak memory, exit code."""

    seconds: float
    max_rss_mb: float  # largest single process of the tree (ru_maxrss, from GNU time)
    tree_rss_mb: float  # peak of the summed RSS of the process tree (psutil polling)
    returncode: int
    stderr_tail: str = ""


GNU_TIME = "/usr/bin/time"


def run_process(cmd: list[str], poll_s: float = 0.02, env: dict | None = None, cwd: Path | None = None) -> ProcRun:
    """Run ``cmd`` to completion, measuring wall time and memory of its whole process tree.

    ``max_rss_mb``: the peak RSS of the largest single process (ru_maxrss), as ``/usr/bin/time -f %M`` reports
    it. The command runs under GNU time because a child forked straight from this (possibly large) Python
    process would inherit this process's RSS high-water mark. ``tree_rss_mb``: the peak over time of the summed
    RSS of the command and all its descendants (the time wrapper left out), sampled every ``poll_s`` s with
    psutil; it counts parallel workers together and may miss spikes shorter than the interval.
    Wall time is measured here around the whole run (the wrapper adds about a millisecond).
    """
    import psutil

    use_time = os.path.exists(GNU_TIME)
    rss_file = tempfile.NamedTemporaryFile(suffix=".rss", delete=False)
    rss_file.close()
    full = [GNU_TIME, "-f", "%M", "-o", rss_file.name, *cmd] if use_time else cmd
    err = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    proc = subprocess.Popen(full, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=cwd)
    peak = [0]
    done = threading.Event()

    def poll() -> None:
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not done.is_set():
            total = 0
            try:
                procs = root.children(recursive=True) if use_time else [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            for p in procs:
                try:
                    total += p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    pass
            peak[0] = max(peak[0], total)
            done.wait(poll_s)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    _, status, rusage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    done.set()
    th.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    err.seek(0)
    tail = err.read().decode(errors="replace")[-2000:]
    err.close()
    max_rss = rusage.ru_maxrss / 1024.0
    if use_time:
        try:
            lines = [ln for ln in Path(rss_file.name).read_text().splitlines() if ln.strip()]
            max_rss = float(lines[-1]) / 1024.0  # kB; GNU time prefixes a 'Command exited...' line on failure
        except (OSError, ValueError, IndexError):
            pass
    os.unlink(rss_file.name)
    return ProcRun(seconds=seconds, max_rss_mb=max_rss, tree_rss_mb=peak[0] / 2**20,
                   returncode=proc.returncode, stderr_tail=tail)


def check(run: ProcRun, what: str) -> ProcRun:
    if run.returncode != 0:
        raise SystemExit(f"{what} failed (exit {run.returncode}):\n{run.stderr_tail}")
    return run


@dataclass
class Repeated:
    """Several runs of the same thing."""

    runs: list[ProcRun] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(r.seconds for r in self.runs)

    @property
    def median(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def max_rss(self) -> float:
        return max(r.max_rss_mb for r in self.runs)

    @property
    def tree_rss(self) -> float:
        return max(r.tree_rss_mb for r in self.runs)

    def times(self) -> str:
        return ", ".join(f"{r.seconds:.1f}" for r in self.runs)


# ------------------------------------------------------------------------------------------- machine

def machine_info() -> dict[str, str]:
    """nproc, memory, CPU model, Python, torch and load average."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    info = {"date": dt.datetime.now().isoformat(timespec="seconds"), "nproc": str(os.cpu_count()),
            "memory": mem, "cpu": cpu, "python": platform.python_version(),
            "load (1/5/15 min)": " ".join(f"{v:.2f}" for v in os.getloadavg())}
    try:
        import torch

        info["torch"] = f"{torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        pass
    return info


def print_machine(log=print) -> dict[str, str]:
    info = machine_info()
    info["sleepstage_cli"] = code_note()
    log("machine: " + "; ".join(f"{k} {v}" for k, v in info.items()))
    return info


def load_now() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def busy_cores(seconds: float = 1.0) -> float:
    """Cores kept busy by the whole machine over the next ``seconds`` (from /proc/stat)."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    total = max(t1 - t0, 1)
    return (os.cpu_count() or 1) * (1 - (i1 - i0) / total)


def wait_quiet(max_wait: float, threshold: float = 0.3, log=print) -> str:
    """Wait up to ``max_wait`` s until other processes use less than ``threshold`` cores; returns a note."""
    if max_wait <= 0:
        return f"load {load_now()}"
    t0 = time.perf_counter()
    busy = busy_cores()
    while busy > threshold and time.perf_counter() - t0 < max_wait:
        busy = busy_cores(2.0)
    waited = time.perf_counter() - t0
    note = f"load {load_now()}, {busy:.1f} cores busy before start"
    if busy > threshold:
        log(f"  (machine still busy after waiting {waited:.0f} s: {busy:.1f} cores in use; measuring anyway)")
    return note


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain fixed-width text table."""
    cols = [header] + rows
    widths = [max(len(str(r[i])) for r in cols) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths)), line]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def save_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))


def add_common_options(ap) -> None:
    """The options every benchmark takes: scratch folder, waiting for a quiet machine, code under test, JSON."""
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="cache and scratch folder")
    ap.add_argument("--quiet-wait", type=float, default=0.0,
                    help="before each run, wait up to this many seconds for the machine to be idle (default 0)")
    ap.add_argument("--code", type=Path, default=None,
                    help="benchmark the sleepstage_cli package in this folder (e.g. a git archive of a commit) "
                         "instead of the installed one")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
