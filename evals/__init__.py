"""zerolm: evals."""
