"""Calibration after training: the temperature T fitted on the validation nights, stored in the model file.

The selected weights score every validation night exactly as ``sleepstage score`` does (test-time
aggregation, :func:`~sleepstage_cli.scoring.inference.score_night`); T is fitted on the scored epochs'
mean log-probabilities (:func:`~sleepstage_cli.evaluation.calibration.calibrate`), so the probabilities
scoring later gives, ``softmax(mean_lp / T)``, are the ones it was fitted for.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from sleepstage_cli.data.dataset import NightRecord, PreparedDataset
from sleepstage_cli.evaluation.calibration import calibrate
from sleepstage_cli.model.staging import StagingModel
from sleepstage_cli.scoring.inference import score_night

NOT_CALIBRATED = "not calibrated (no validation nights)"


def uncalibrated(reason: str = NOT_CALIBRATED) -> dict:
    """The calibration record of a model without a fit: T = 1 and why."""
    return {"temperature": 1.0, "ece_before": None, "ece_after": None, "nll_before": None, "nll_after": None,
            "nights": 0, "epochs": 0, "note": reason}


def fit_on_validation(model: StagingModel, state: dict | None, ds: PreparedDataset, nights: list[NightRecord],
                      index: list[int], device: torch.device, amp: bool) -> dict:
    """Fit T on ``nights`` scored with ``state`` (the selected weights; None: the model's own).

    Returns the :func:`~sleepstage_cli.evaluation.calibration.calibrate` record (``temperature``, ``ece_before``,
    ``ece_after``, ``nll_before``, ``nll_after``, ``nights``, ``epochs``) with ``method``; without nights,
    :func:`uncalibrated`. ``model`` itself is left as it is.
    """
    if not nights:
        return uncalibrated()
    scorer = model
    if state is not None:
        scorer = copy.deepcopy(model)
        scorer.load_state_dict(state)
    mean_lps, labels = [], []
    for night in nights:
        rec = ds.open(night)
        result = score_night(scorer, np.asarray(rec["x"][:, index], dtype=np.float32), device, amp=amp)
        mean_lps.append(result.mean_log_probabilities)
        labels.append(np.asarray(rec["label"], dtype=np.int64))
    out = calibrate(mean_lps, labels)
    if out["epochs"] == 0:
        return uncalibrated("not calibrated (no scored epoch in the validation nights)")
    out["method"] = "temperature scaling: T minimising the NLL of the validation nights' epochs"
    return out
