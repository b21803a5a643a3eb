"""Conditioning: raw EDF channels -> filtered, resampled, 30-s epochs on one time line."""
