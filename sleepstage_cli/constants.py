"""The fixed geometry of the method (SeqSleepNet, Phan et al. 2019): 30-s epochs at 100 Hz."""

SAMPLING_RATE = 100.0
"""Hz; every channel is resampled to it."""

EPOCH_SECONDS = 30.0
EPOCH_SAMPLES = int(EPOCH_SECONDS * SAMPLING_RATE)
