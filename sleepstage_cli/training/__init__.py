"""Training: the train loop and the subject-wise cross-validation protocol (split, folds, parallel jobs)."""
