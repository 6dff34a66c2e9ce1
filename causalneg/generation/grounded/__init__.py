"""Grounded counterfactual edits: the CausalNeg idea for small local generators (DESIGN §1a, "grounded edits").

Data flow: ``spans`` (evidence without an LLM) -> ``schemas`` + prompts ``grounded_*.jinja`` (a span-anchored
decomposition, a short substitute, a yes/no judge) -> ``edits`` (applied by code) -> ``verify`` (checks with
reasons) -> ``pipeline`` (one query at a time, every call journaled) -> the shared generated-negatives artifact.
"""
