"""Generation backends behind one protocol (see ``base.py``): transformers, vllm, openai."""
