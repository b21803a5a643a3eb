"""Evaluation: scored nights against references (pairing, epoch matching, metrics, sleep statistics)."""
