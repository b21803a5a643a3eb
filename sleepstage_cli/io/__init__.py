"""Reading what users have: EDF/EDF+/BDF signals, channel selection and hypnograms."""
