"""LightningDataModule: artifacts in ``prepare_data`` (mining in-process, generation handed off to a child process
by the stages' :class:`ArtifactSources`), pools and loaders in ``setup`` (which only reads files). The selected
training and dev query ids arrive in :class:`DataSettings`; this module selects nothing itself."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from causalneg.artifacts import fingerprint
from causalneg.data.batching import (
    EpochGroupSampler,
    GroupCollator,
    GroupDataset,
    QueryCollator,
    QueryTextDataset,
    Tokenize,
)
from causalneg.data.groups import GroupSpec, QueryPool, build_pools, expand_pairs, hold_out_diagnostic_pools
from causalneg.errors import ConfigError
from causalneg.records import Negative, NegativeSource, Passage, RetrievalDataset


@dataclass(frozen=True)
class DataSettings:
    """Batching and split choices (the ``data`` config group) and the selected query ids of the training and dev
    splits (:func:`causalneg.stages.specs.selection`: this module selects nothing itself)."""

    spec: GroupSpec
    seed: int = 0
    batch_size: int = 16
    eval_batch_size: int = 64
    num_workers: int = 0
    train_split: str = "train"
    dev_split: str | None = None
    train_query_ids: tuple[str, ...] = ()
    dev_query_ids: tuple[str, ...] = ()
    selection_seed: int = 0  # held-out diagnostic groups and the dev sub-corpus
    diagnostics_groups: int = 32
    dev_subcorpus_random: int = 2000


@dataclass(frozen=True)
class DevSet:
    """What validation ranks: the dev sub-corpus (ids and passage texts, in the same order) and the dev queries'
    judgements. The dev queries themselves come from ``val_dataloader``."""

    doc_ids: tuple[str, ...]
    doc_texts: tuple[str, ...]
    qrels: Mapping[str, Mapping[str, int]]


@dataclass(frozen=True)
class ArtifactSources:
    """Where negatives come from. ``mined(split)`` returns a complete mined artifact folder (mining if needed);
    ``ensure_generated()`` returns a complete generated artifact folder (generating in a child process if
    allowed); ``load_*`` read them."""

    mined: Callable[[str], Path] | None = None
    load_mined: Callable[[Path], dict[str, list[tuple[str, float]]]] | None = None
    ensure_generated: Callable[[], Path] | None = None
    load_generated: Callable[[Path], dict[str, list[Negative]]] | None = None


class ResumableSampler(Sampler[tuple[int, int]]):
    """An :class:`EpochGroupSampler` whose pass over an epoch starts after the batches already trained on.

    ``batches_done()`` is read when iteration starts: 0 at the start of an epoch, N after resuming from a
    checkpoint saved N batches into the epoch; the first ``N * batch_size`` items are skipped, so a resumed run
    sees exactly the batches an uninterrupted run would have seen next.
    """

    def __init__(self, base: EpochGroupSampler, batches_done: Callable[[], int], batch_size: int) -> None:
        self.base, self.batches_done, self.batch_size = base, batches_done, batch_size

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return itertools.islice(iter(self.base), self.batches_done() * self.batch_size, None)

    def __len__(self) -> int:
        return len(self.base)


class ResumableLoader(DataLoader):
    """The training DataLoader, stateful in Lightning's sense so that Lightning does not warn that a mid-epoch
    resume replays the epoch: the state records (epoch, batches finished); restoring needs no action because
    :class:`ResumableSampler` reads the fit loop's restored progress itself. (Lightning 2.6 builds the train
    loader for ``estimated_stepping_batches`` before it restores loop states, so ``load_state_dict`` is not
    even called when ``configure_optimizers`` asks for the step count, as ours does.)"""

    def state_dict(self) -> dict[str, int]:
        assert isinstance(self.sampler, ResumableSampler)
        return {"epoch": self.sampler.base.epoch, "batches": self.sampler.batches_done()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        return None


def generated_counts(pools: Sequence[QueryPool], source: NegativeSource) -> dict[str, int]:
    """Kept generated negatives of ``source`` in the training pools: ``kept`` (all of them; a group draws at most
    ``num_generated`` per query), ``queries_with_generated`` (queries with at least one) and ``queries``."""
    per_query = [sum(1 for n in p.generated if n.source == source) for p in pools]
    return {
        "kept": sum(per_query),
        "queries_with_generated": sum(1 for n in per_query if n),
        "queries": len(pools),
    }


class RetrievalDataModule(L.LightningDataModule):
    def __init__(
        self, dataset: RetrievalDataset, tokenize: Tokenize, settings: DataSettings, sources: ArtifactSources
    ) -> None:
        super().__init__()
        self.dataset, self.tokenize, self.settings, self.sources = dataset, tokenize, settings, sources
        self.train_pools: list[QueryPool] = []
        self.diagnostic_pools: list[QueryPool] = []
        self.dev_items: list[tuple[str, str]] = []
        self.dev_corpus_ids: list[str] = []
        self._dirs: dict[str, Path] = {}
        self.generated_counts: dict[str, int] = {}  # setup(): kept generated negatives of training queries
        self.dropped_short = 0  # setup(): training queries left out by data.min_mined

    @property
    def artifact_dirs(self) -> dict[str, Path]:
        """The artifact folders ``setup`` read: ``mined_train``, ``mined_dev``, ``generated`` (those in use)."""
        return dict(self._dirs)

    # -- artifacts -------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Make sure every artifact exists (rank 0 only under DDP). Never stores state on ``self``."""
        s, sources = self.settings, self.sources
        if s.spec.num_mined and sources.mined is None:
            raise ConfigError("data.num_mined > 0 but no mining is configured (mining=bm25|dense)")
        if sources.mined is not None:
            sources.mined(s.train_split)
            if s.dev_split:
                sources.mined(s.dev_split)
        if s.spec.num_generated:
            if sources.ensure_generated is None:
                raise ConfigError("data.num_generated > 0 but no generation artifact is configured")
            sources.ensure_generated()

    def _resolve(self) -> None:
        # prepare_data ran (possibly on another rank); the providers now only locate complete folders.
        if self.sources.mined is not None:
            self._dirs["mined_train"] = self.sources.mined(self.settings.train_split)
            if self.settings.dev_split:
                self._dirs["mined_dev"] = self.sources.mined(self.settings.dev_split)
        if self.settings.spec.num_generated and self.sources.ensure_generated is not None:
            self._dirs["generated"] = self.sources.ensure_generated()

    # -- setup -----------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_pools:
            return
        self._resolve()
        s, ds = self.settings, self.dataset
        mined = self._load_mined("mined_train")
        generated = None
        if "generated" in self._dirs and self.sources.load_generated is not None:
            generated = self.sources.load_generated(self._dirs["generated"])
        pools = build_pools(ds, s.train_split, list(s.train_query_ids), mined, generated, s.spec.min_grade)
        if not pools:
            raise ConfigError(
                f"no training queries with positives of grade >= {s.spec.min_grade} in split "
                f"'{s.train_split}' of '{ds.name}'"
            )
        self.train_pools, self.diagnostic_pools = self._hold_out(pools)
        if s.spec.min_mined:  # after the hold-out: the held-out groups do not depend on the rule
            self.train_pools = self._drop_short(self.train_pools)
        if s.spec.positives == "pairs":  # after the hold-out: the same queries are held out in every mode
            self.train_pools = expand_pairs(self.train_pools)
        if s.spec.num_generated:
            self.generated_counts = generated_counts(self.train_pools, s.spec.generated_source)
            c = self.generated_counts
            print(
                f"[causalneg] generated negatives ({s.spec.generated_source.name.lower()}): {c['kept']} kept for "
                f"{c['queries_with_generated']} of {c['queries']} training queries (at most "
                f"{s.spec.num_generated} per group){'' if c['kept'] else ' -- NONE: this arm equals mined-only'}",
                flush=True,
            )
        if s.dev_split:
            self._setup_dev()

    def _drop_short(self, pools: list[QueryPool]) -> list[QueryPool]:
        """The pools that kept at least ``min_mined`` mined candidates (``data.min_mined``); how many were left
        out is printed and kept in ``dropped_short``."""
        need = self.settings.spec.min_mined
        kept = [p for p in pools if len(p.mined) >= need]
        self.dropped_short = len(pools) - len(kept)
        print(
            f"[causalneg] data.min_mined={need}: {self.dropped_short} of {len(pools)} training queries left out "
            "(fewer mined candidates kept)",
            flush=True,
        )
        if not kept:
            raise ConfigError(
                f"data.min_mined={need} leaves no training query: every one of the {len(pools)} kept fewer "
                "mined candidates (lower it, or widen mining.rank_max)"
            )
        return kept

    def _load_mined(self, key: str) -> dict[str, list[tuple[str, float]]] | None:
        if key not in self._dirs or self.sources.load_mined is None:
            return None
        return self.sources.load_mined(self._dirs[key])

    def _hold_out(self, pools: list[QueryPool]) -> tuple[list[QueryPool], list[QueryPool]]:
        """Hold out a seeded set of groups for the shortcut diagnostics, chosen without looking at negatives
        (:func:`~causalneg.data.groups.hold_out_diagnostic_pools`), so every arm trains on the same queries."""
        n = min(self.settings.diagnostics_groups, len(pools) // 5)
        return hold_out_diagnostic_pools(pools, n, self.settings.selection_seed)

    def _setup_dev(self) -> None:
        """Dev queries and a fixed sub-corpus: their positives + their mined negatives + a seeded random sample."""
        s, ds = self.settings, self.dataset
        assert s.dev_split is not None
        dev = ds.split(s.dev_split)
        qids = list(s.dev_query_ids)
        self.dev_items = [(qid, dev.queries[qid].text) for qid in qids]
        ids = {pid for qid in qids for pid in dev.qrels.get(qid, {}) if pid in ds.corpus}
        for qid, cands in (self._load_mined("mined_dev") or {}).items():
            if qid in set(qids):
                ids.update(pid for pid, _ in cands)
        rng = random.Random(fingerprint(["dev-corpus", s.selection_seed]))
        corpus_ids = sorted(ds.corpus)
        ids.update(rng.sample(corpus_ids, min(s.dev_subcorpus_random, len(corpus_ids))))
        self.dev_corpus_ids = sorted(ids)

    def dev_set(self) -> DevSet:
        """The dev sub-corpus and the dev qrels, once ``setup`` has run (the system's validation data)."""
        if not self.settings.dev_split:
            raise ConfigError("validation needs a dev split (dataset.dev_split)")
        corpus, split = self.dataset.corpus, self.dataset.split(self.settings.dev_split)
        texts = tuple(corpus[pid].full_text for pid in self.dev_corpus_ids)
        qrels = {qid: split.qrels.get(qid, {}) for qid, _ in self.dev_items}
        return DevSet(tuple(self.dev_corpus_ids), texts, qrels)

    # -- loaders ---------------------------------------------------------------------------------------------
    def _random_pool(self) -> Sequence[Passage]:
        return list(self.dataset.corpus.values()) if self.settings.spec.num_random else ()

    def _generator(self) -> torch.Generator:
        # A private generator: creating a loader's iterator draws its base seed from it, not from the global RNG
        # (which then holds only the model's own draws, e.g. dropout, and survives a resume unchanged).
        return torch.Generator().manual_seed(self.settings.seed)

    def _group_loader(self, pools: list[QueryPool], shuffle: bool, batch_size: int) -> DataLoader:
        s = self.settings
        return DataLoader(
            GroupDataset(pools, s.spec, s.seed, self._random_pool()),
            batch_size=batch_size,
            sampler=EpochGroupSampler(len(pools), s.seed, shuffle=shuffle),
            collate_fn=GroupCollator(self.tokenize, s.spec.negative_slots, s.spec.extra_positive_slots),
            num_workers=s.num_workers,
            drop_last=shuffle,
            generator=self._generator(),
        )

    def _batches_done(self) -> int:
        """Batches of the current epoch the fit loop has already fetched and trained on: 0 at an epoch's start
        (and outside a fit), N when resuming from a checkpoint saved N batches into the epoch (Lightning
        restores its progress counters before the first batch is fetched)."""
        trainer = self.trainer
        return 0 if trainer is None else int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)

    def train_dataloader(self) -> DataLoader:
        s = self.settings
        return ResumableLoader(
            GroupDataset(self.train_pools, s.spec, s.seed, self._random_pool()),
            batch_size=s.batch_size,
            sampler=ResumableSampler(
                EpochGroupSampler(len(self.train_pools), s.seed, shuffle=True),
                self._batches_done,
                s.batch_size,
            ),
            collate_fn=GroupCollator(self.tokenize, s.spec.negative_slots, s.spec.extra_positive_slots),
            num_workers=s.num_workers,
            drop_last=True,
            generator=self._generator(),
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            QueryTextDataset(self.dev_items),
            batch_size=self.settings.eval_batch_size,
            collate_fn=QueryCollator(self.tokenize),
            num_workers=0,
            generator=self._generator(),
        )

    def diagnostics_dataloader(self) -> DataLoader | None:
        """Held-out groups at a fixed epoch (0), for the shortcut diagnostics callback."""
        if not self.diagnostic_pools:
            return None
        return self._group_loader(
            self.diagnostic_pools, shuffle=False, batch_size=self.settings.eval_batch_size
        )
