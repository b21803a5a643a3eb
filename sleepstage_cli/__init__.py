"""sleepstage: sleep staging from EDF polysomnography with SeqSleepNet on PyTorch."""

__version__ = "0.1.0"
