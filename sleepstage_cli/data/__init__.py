"""Prepared datasets: their on-disk format, ``prepare`` (EDF nights -> dataset) and the training window loader."""
