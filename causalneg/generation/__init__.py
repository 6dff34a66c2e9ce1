"""LLM negative synthesis: CoT decomposition, counterfactual perturbation, the naive baseline, filters."""
