"""causalneg: dense retrievers trained with mined and LLM-written counterfactual hard negatives."""

__version__ = "0.1.0"
