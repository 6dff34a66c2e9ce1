"""Data: sources (BEIR folders, Semanlink, HF, ir_datasets), mining, generated-negative artifacts, groups."""
