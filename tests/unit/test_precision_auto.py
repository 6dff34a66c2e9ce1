"""``precision: auto``: bf16 only with native bf16 (AMX / AVX512-BF16, or a bf16 GPU), fp32 elsewhere; the
resolved value replaces ``auto`` in the config, so an fp32 machine keeps today's mining fingerprint."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from causalneg import precision
from causalneg.config import resolve_precisions as resolve_config
from causalneg.data.mining.artifact import mining_manifest
from causalneg.evaluation.encoding import canonical_precision
from causalneg.precision import cpu_flags, resolve_precision
from causalneg.records import Passage, Query, RetrievalDataset, RetrievalSplit
from causalneg.stages.specs import mining_spec, selection

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture(params=[False, True], ids=["avx2", "amx"])
def native(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(precision, "native_bf16_cpu", lambda: request.param)
    monkeypatch.setattr(precision, "encode_device_type", lambda: "cpu")
    return bool(request.param)


def compose_cfg(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="run", overrides=list(overrides))


def tiny_dataset() -> RetrievalDataset:
    split = RetrievalSplit({"q": Query("q", "a question")}, {"q": {"d": 1}})
    return RetrievalDataset("t", {"d": Passage("d", "an answer")}, {"train": split}, fingerprint="f")


def test_auto_resolves_by_hardware(native: bool) -> None:
    assert resolve_precision("auto", "cpu", "trainer") == ("bf16-mixed" if native else "32-true")
    assert resolve_precision("auto", "cpu", "encode") == ("bf16" if native else "32-true")
    assert canonical_precision("auto") == ("bf16" if native else "32-true")
    for explicit in ("32-true", "bf16-mixed", "bf16"):
        assert resolve_precision(explicit, "cpu", "trainer") == explicit  # never overridden


def test_cpu_flags_read_native_units(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    assert cpu_flags(str(info)) == {"fpu", "sse", "avx2", "fma"}
    assert not set(precision.NATIVE_FLAGS) & cpu_flags(str(info))  # type: ignore[operator]
    assert cpu_flags(str(tmp_path / "absent")) is None


def test_this_machine_without_native_bf16_picks_fp32() -> None:
    if precision.native_bf16_cpu():
        pytest.skip("this CPU has native bf16 (AMX/AVX512-BF16): auto picks bf16 here")
    assert resolve_precision("auto", "cpu", "trainer") == "32-true"


def test_resolve_config_rewrites_every_auto_for_the_logged_params(native: bool) -> None:
    cfg = compose_cfg("mining=dense")
    assert (cfg.trainer.precision, cfg.eval.precision, cfg.mining.dense.precision) == ("auto",) * 3
    resolved = resolve_config(cfg)
    bf16 = native
    assert cfg.trainer.precision == ("bf16-mixed" if bf16 else "32-true")
    assert cfg.eval.precision == cfg.mining.dense.precision == ("bf16" if bf16 else "32-true")
    assert set(resolved) == {"trainer.precision", "eval.precision", "mining.dense.precision"}
    explicit = compose_cfg("mining=dense", "trainer.precision=32-true")
    assert "trainer.precision" not in resolve_config(explicit) and explicit.trainer.precision == "32-true"


def test_auto_keeps_todays_mining_fingerprint_on_fp32(native: bool) -> None:
    """The fingerprint holds the resolved precision: auto == 32-true on an fp32 machine, == bf16 on a bf16 one."""
    dataset = tiny_dataset()

    base = compose_cfg("mining=dense")

    def fp(value: str) -> str:
        cfg = base.copy()
        cfg.mining.dense.precision = value
        split = str(cfg.dataset.train_split)
        return mining_manifest(mining_spec(cfg, split), dataset, selection(cfg, dataset, split)).fingerprint

    auto, fp32, bf16 = fp("auto"), fp("32-true"), fp("bf16")
    assert auto == (bf16 if native else fp32) and fp32 != bf16
