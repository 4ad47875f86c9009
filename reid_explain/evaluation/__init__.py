"""Evaluation: retrieval metrics, faithfulness by perturbation, grounding and sanity checks."""
