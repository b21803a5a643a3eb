"""Scoring: a night through a model (inference, sequence aggregation) and the score pipeline."""
