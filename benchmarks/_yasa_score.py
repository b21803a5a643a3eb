"""One YASA staging run, as a user would script it (run as its own process by bench_score.py).

Reads the EDF with MNE, builds ``yasa.SleepStaging(raw, eeg_name=..., eog_name=..., emg_name=...)``, calls
``predict()`` and writes the hypnogram (and per-stage probabilities) as CSV.

    python benchmarks/_yasa_score.py night.edf out.csv --eeg "EEG C4-A1" --eog "EOG R-L" --emg "EMG Chin1-Chin2"

With ``--stages`` it prints the seconds spent in each step (import, read, features, predict, write) to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("edf")
    ap.add_argument("out")
    ap.add_argument("--eeg", required=True)
    ap.add_argument("--eog")
    ap.add_argument("--emg")
    ap.add_argument("--stages", action="store_true", help="print per-step seconds to stderr")
    args = ap.parse_args(argv)

    import mne
    import pandas as pd
    import yasa

    t_import = time.perf_counter()
    raw = mne.io.read_raw_edf(args.edf, preload=True, verbose="error")
    t_read = time.perf_counter()
    sls = yasa.SleepStaging(raw, eeg_name=args.eeg, eog_name=args.eog, emg_name=args.emg)
    sls.get_features()
    t_feat = time.perf_counter()
    hyp = sls.predict()  # a yasa.Hypnogram holding the stages and their probabilities
    t_pred = time.perf_counter()
    df = pd.DataFrame({"epoch": range(len(hyp.hypno)), "stage": list(hyp.hypno)})
    df = pd.concat([df, hyp.proba.reset_index(drop=True)], axis=1)
    df.to_csv(args.out, index=False)
    t_write = time.perf_counter()
    if args.stages:
        print(f"import {t_import - t0:.2f} read {t_read - t_import:.2f} features {t_feat - t_read:.2f} "
              f"predict {t_pred - t_feat:.2f} write {t_write - t_pred:.2f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
