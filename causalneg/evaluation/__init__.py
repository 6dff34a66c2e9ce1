"""Evaluation: fast corpus encoding with an embedding cache, exact search, trec_eval-compatible metrics."""
