"""Phenomenological renormalization group: coarse-graining and scaling (science.md section 4)."""
