"""Spectrograms: conditioned epochs -> normalised time-frequency images (the torch front end and its cache)."""
