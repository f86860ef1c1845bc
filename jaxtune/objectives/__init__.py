"""Training objectives: one module per objective (issue 18)."""
