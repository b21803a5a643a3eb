#!/usr/bin/env bash
# Sleep-EDF-20, from nothing to an installed, documented model: fetch, prepare (EEG + EOG), the authors'
# 20-fold cross-validation, a final model on all nights, its card, installed in the model zoo.
#
# For a machine with internet (and ideally a GPU): about 2.5 GB of downloads; the cross-validation trains
# 20 models (hours on a GPU, days on a CPU). Every step resumes when run again after a crash or Ctrl-C.
#
#   bash recipes/sleep-edf-20.sh                      # everything, in ./sleep-edf-20/
#   WORK=/data/sedf DEVICE=cuda bash recipes/sleep-edf-20.sh
#
# Settings (environment variables):
#   WORK        working folder (default: sleep-edf-20)
#   BASE_URL    where Sleep-EDF Expanded lies (default: PhysioNet's sleep-edfx 1.0.0; or a mirror)
#   DEVICE      auto, cpu, cuda, cuda:N (default: auto)
#   NAME        the installed model's name (default: sleepedf20-eeg-eog)
#   SUBJECTS    what to fetch (default: sleepedf-20, the split's 39 nights); fewer subjects need
#               ALLOW_MISSING=1, as the split's other nights are then missing
#   TRAIN_ARGS  extra options for crossval and train (e.g. "--preset paper", or "--max-steps 20" for a dry run)
set -euo pipefail

WORK=${WORK:-sleep-edf-20}
BASE_URL=${BASE_URL:-}
DEVICE=${DEVICE:-auto}
NAME=${NAME:-sleepedf20-eeg-eog}
SUBJECTS=${SUBJECTS:-sleepedf-20}
TRAIN_ARGS=${TRAIN_ARGS:-}
SLEEPSTAGE=${SLEEPSTAGE:-sleepstage}

# shellcheck disable=SC2206
extra=($TRAIN_ARGS)
url=()
[ -n "$BASE_URL" ] && url=(--base-url "$BASE_URL")
missing=()
[ "${ALLOW_MISSING:-0}" = 1 ] && missing=(--allow-missing)

step() { printf '\n== %s\n' "$*" >&2; }

step "1/6 fetch the Sleep-EDF-20 nights (verified against SHA256SUMS.txt; present files are skipped)"
$SLEEPSTAGE fetch sleep-edf --subjects "$SUBJECTS" "${url[@]}" -o "$WORK/raw"

step "2/6 prepare: EEG Fpz-Cz + EOG horizontal, 30 min of wake kept around each night's sleep"
$SLEEPSTAGE prepare "$WORK/raw/sleep-cassette" -o "$WORK/data" --channels eeg,eog

step "3/6 cross-validate with the authors' Sleep-EDF-20 split (20 folds)"
$SLEEPSTAGE crossval "$WORK/data" --split sleepedf-20 "${missing[@]}" -o "$WORK/crossval" --device "$DEVICE" \
  "${extra[@]}"

step "4/6 train the final model on all nights (a tenth of the subjects select the checkpoint)"
if [ ! -f "$WORK/$NAME.pt" ]; then
  resume=()
  [ -f "$WORK/$NAME.pt.ckpt" ] && resume=(--resume)
  $SLEEPSTAGE train "$WORK/data" -o "$WORK/$NAME.pt" --device "$DEVICE" "${resume[@]}" "${extra[@]}"
fi

step "5/6 install it with its card (the cross-validated metrics of step 3 go into the card)"
$SLEEPSTAGE models install "$WORK/$NAME.pt" --name "$NAME" --crossval "$WORK/crossval" --force

step "6/6 the card"
$SLEEPSTAGE models show "$NAME"
printf '\nScore a night with: sleepstage score NIGHT.edf -o OUT/ --model %s\n' "$NAME" >&2
