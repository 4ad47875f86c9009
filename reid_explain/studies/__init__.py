"""Studies that reproduce the papers' claims end to end (training, controls, statistics)."""
