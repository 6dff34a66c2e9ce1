"""GGUF to a plain Hugging Face folder (safetensors + config + tokenizer), for the builtin generators.

Config and tokenizer come from the GGUF metadata (transformers' GGUF readers, metadata only), then the weights are
dequantised **tensor by tensor** with the ``gguf`` reader (memory-mapped) and written to safetensors shards of at
most ``shard_bytes``; peak memory is one shard plus one tensor, not the whole model (transformers' own GGUF loader
needs ~3 GB for the 0.5B). Tensor names and the llama q/k un-permutation reuse transformers' GGUF tables, so the
result equals what ``from_pretrained(..., gguf_file=...)`` produces.
"""

from __future__ import annotations

import json
from pathlib import Path

from causalneg.errors import ConfigError


def convert_gguf(
    gguf_path: str | Path, out_dir: str | Path, dtype: str = "bfloat16", shard_bytes: int = 1 << 29
) -> Path:
    """Write an HF folder (config, generation config, tokenizer, safetensors shards) from a GGUF file.

    Memory stays bounded by one shard (``shard_bytes`` of ``dtype`` tensors) plus one dequantised float32 tensor.
    """
    import numpy as np
    import torch
    from gguf import GGUFReader, dequantize
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
        read_field,
    )

    gguf_path, out = Path(gguf_path), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config.dtype = dtype
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    expected = set(skeleton.state_dict())
    if config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    reader = GGUFReader(gguf_path)
    arch = str(read_field(reader, "general.architecture")[0])
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=config.to_dict())
    names = get_gguf_hf_weights_map(skeleton, processor)
    del skeleton

    torch_dtype = getattr(torch, dtype)
    shard: dict[str, torch.Tensor] = {}
    shard_files: list[tuple[str, list[str]]] = []

    def flush() -> None:
        if shard:
            file = f"model-{len(shard_files) + 1:05d}.safetensors"
            save_file(shard, str(out / file), metadata={"format": "pt"})
            shard_files.append((file, list(shard)))
            shard.clear()

    written: set[str] = set()
    for tensor in reader.tensors:
        weights = dequantize(tensor.data, tensor.tensor_type)
        result = processor.process(
            weights=weights, name=tensor.name, tensor_key_mapping=names, parsed_parameters={}
        )
        if result.name not in names:
            continue
        hf_name = names[result.name]
        shard[hf_name] = torch.from_numpy(np.array(result.weights, dtype=np.float32)).to(
            torch_dtype
        )  # writable copy
        written.add(hf_name)
        if sum(t.numel() * t.element_size() for t in shard.values()) >= shard_bytes:
            flush()
    flush()
    missing = expected - written
    if missing:
        raise ConfigError(f"GGUF {gguf_path} lacks {len(missing)} tensors, e.g. {sorted(missing)[:3]}")
    _write_index(out, shard_files)
    config.save_pretrained(out)
    GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _write_index(out: Path, shard_files: list[tuple[str, list[str]]]) -> None:
    """One shard is renamed ``model.safetensors``; several get a ``model.safetensors.index.json``."""
    if len(shard_files) == 1:
        (out / shard_files[0][0]).rename(out / "model.safetensors")
        return
    weight_map = {name: file for file, names in shard_files for name in names}
    index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
