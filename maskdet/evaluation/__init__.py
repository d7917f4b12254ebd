"""Evaluation: predictions, classification reports, confusion matrices."""
