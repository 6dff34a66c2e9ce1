"""The grounded-edit pipeline: span-anchored decomposition -> substitutes -> edits by code -> verification.

For each selected query (one at a time, so that an engine with a prefix cache, like llama.cpp, reuses the
system prompt and the passage across the query's calls):

1. **Evidence** (no LLM): the positive's spans (:mod:`.spans`) that the query names, minus answer aliases, and
   its sentences. The query's judged positives are edited in order of their query-side spans (most first), the
   next one only while fewer than ``min_kept`` negatives are kept (HotpotQA has two per query).
2. **Decompose** (LLM, schema :func:`.schemas.decomposition_schema`): 2-4 requirements, each anchored to one of
   those options, with a critical flag and a break strategy. Invalid output is retried (fresh recorded seed,
   higher temperature), as in the official pipeline.
3. **Edit** (LLM only for the substitute): per critical requirement, a span with a replacement strategy gets a
   short substitute (:class:`.schemas.Substitute`) and every mention is replaced (:func:`.edits.replace_mentions`);
   a sentence, or a span with ``relation_break``, loses its sentence (:func:`.edits.drop_sentence`). Where the
   data set has answers and the positive states one, one more edit by code alone removes the sentences that state
   it (the issue's "remove the sentence that carries the answer"; provenance ``requirement_source: answer``).
   A query still short of ``min_kept`` kept negatives gets, once per span that gave a kept edit, a request for
   other substitutes, then substitutes for up to ``fallback_spans`` query-named spans that no critical
   requirement anchored (``requirement_source: query_span``). A span whose LLM substitutes all fail gets up to
   ``corpus_substitutes`` siblings from the query's BM25 neighbours instead (:mod:`.siblings`; provenance
   ``substitute_source: corpus``), checked like the LLM's.
4. **Verify** (:mod:`.verify`): cheap checks, then the encoder's false-negative guard, then the LLM judge.

Every LLM call goes through the :class:`~causalneg.generation.store.RequestStore` (the judge's scores too), so an
interrupted run resumes without redoing or duplicating a request. Output: the same
:class:`~causalneg.generation.pipeline.PipelineResult` as the official methods, so artifacts and training are
shared; each kept negative records its requirement, evidence span, edit, strategy, judge probability and
similarities.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pydantic import BaseModel
from tqdm.auto import tqdm

from causalneg.artifacts import fingerprint
from causalneg.errors import ConfigError
from causalneg.generation.backends.base import GenerationBackend, GenerationRequest, RawOutput, SamplingConfig
from causalneg.generation.filters import Verdict, leaked_answer, parse_output
from causalneg.generation.grounded import edits as E
from causalneg.generation.grounded.schemas import (
    JUDGE_CHOICES,
    MAX_REQUIREMENTS,
    MAX_SUBSTITUTES,
    MIN_REQUIREMENTS,
    REPLACE_STRATEGIES,
    REQUIREMENT_CHARS,
    JudgeAnswer,
    Substitute,
    decomposition_schema,
    requirements_of,
    sentence_label,
)
from causalneg.generation.grounded.siblings import rank_siblings, sibling_candidates
from causalneg.generation.grounded.spans import (
    Span,
    content_tokens,
    extract_spans,
    query_side_spans,
    split_sentences,
)
from causalneg.generation.grounded.verify import (
    NUMERIC_KINDS,
    VerifyConfig,
    check_core,
    check_edit,
    check_judge,
    check_same_thing,
    check_similarity,
    check_substitute,
    core_sentences,
)
from causalneg.generation.grounded.vocabulary import CorpusVocabulary
from causalneg.generation.pipeline import PipelineResult
from causalneg.generation.prompting import load_profiles, render_template, template_version
from causalneg.generation.schemas import schema_hash
from causalneg.generation.store import RequestStore, derive_seed, request_key

Similarity = Callable[[str, list[str]], list[float]]  # (query, passages) -> cos(q, passage) under the encoder
MIN_SENTENCE_WORDS = 5  # shorter "sentences" (a title) are shown but not offered as evidence
MAX_SENTENCE_OPTIONS = 4


@dataclass(frozen=True)
class GroundedSettings:
    """How the grounded method generates; ``sampling`` maps ``decompose``/``substitute`` to base sampling."""

    num_negatives: int = 4  # at most this many kept per query
    min_kept: int = 2  # the next judged positive is edited while fewer than this are kept
    fallback_spans: int = (
        2  # query-named spans no requirement anchored, tried while fewer than min_kept are kept
    )
    max_spans: int = 10  # query-side spans offered as evidence
    max_sentences: int = 8  # sentences shown (and offered) per passage
    min_overlap: float = 0.5  # share of a span's content tokens the query must name
    max_retries: int = 2
    temperature_step: float = 0.2
    max_temperature: float = 1.3
    seed: int = 0
    source: str = "generated"
    backend_signature: str = ""
    use_spacy: bool = True
    corpus_substitutes: int = (
        0  # siblings from the item's neighbours tried per span whose LLM substitutes failed
    )
    progress: bool = True
    sampling: dict[str, SamplingConfig] = field(default_factory=dict)
    verify: VerifyConfig = field(default_factory=VerifyConfig)

    def stage_sampling(self, stage: str, attempt: int) -> SamplingConfig:
        base = self.sampling.get(stage, SamplingConfig(max_new_tokens=64 if stage == "substitute" else 400))
        temperature = min(base.temperature + attempt * self.temperature_step, self.max_temperature)
        return replace(base, temperature=max(base.temperature, temperature))


@dataclass(frozen=True)
class GroundedItem:
    """One query: its text, gold answers, and its judged positives as ``(passage id, full text)``."""

    query_id: str
    query: str
    positives: tuple[tuple[str, str], ...]
    answers: tuple[str, ...] = ()
    profile: str = "generic"
    titles: tuple[str, ...] = ()  # each positive's title (its text starts with "title. "), or empty
    neighbours: tuple[
        str, ...
    ] = ()  # BM25's top passages for the query, judged positives left out (siblings)


@dataclass
class _Evidence:
    positive_id: str
    passage: str
    spans: list[Span]
    sentences: list[str]

    answers: tuple[str, ...] = ()
    title: str = ""
    core: list[str] | None = None  # the sentences an edit must change (verify.core_sentences); None: not yet

    @property
    def sentence_options(self) -> dict[str, str]:
        """Sentences that carry evidence (a query-side span or an answer alias), at most :data:`MAX_SENTENCE_OPTIONS`.

        Dropping a sentence that holds neither changes nothing the query needs.
        """
        anchors = [s.text for s in self.spans] + list(self.answers)
        options = {
            sentence_label(i): s
            for i, s in enumerate(self.sentences)
            if len(s.split()) >= MIN_SENTENCE_WORDS and any(E.mentions(s, a) for a in anchors)
        }
        return dict(list(options.items())[:MAX_SENTENCE_OPTIONS])

    @property
    def options(self) -> tuple[str, ...]:
        return tuple(s.text for s in self.spans) + tuple(self.sentence_options)


class JudgeBackend:
    """The LLM judge as a journaled backend: each output is ``{"yes": p, "no": 1 - p}`` as JSON text.

    Uses the backend's :class:`~causalneg.generation.backends.base.ChoiceScorer` when it has one (next-token
    probabilities); otherwise a greedy yes/no answer constrained by :class:`.schemas.JudgeAnswer` (p is 0 or 1).
    """

    def __init__(self, backend: GenerationBackend) -> None:
        self.backend = backend
        self.name = f"{backend.name}-judge"
        self.model_id = backend.model_id
        self.scores = hasattr(backend, "choice_probabilities")

    def generate(
        self, requests: Sequence[GenerationRequest], schema: type[BaseModel], sampling: SamplingConfig
    ) -> list[RawOutput]:
        if self.scores:
            try:
                probabilities = self.backend.choice_probabilities(requests, JUDGE_CHOICES)  # type: ignore[attr-defined]
            except Exception as err:  # one failed call fails its requests only; a re-run retries them
                return [RawOutput(r.key, "", 0, error=f"judge: {err}") for r in requests]
            return [RawOutput(r.key, json.dumps(p), 0) for r, p in zip(requests, probabilities, strict=True)]
        outputs = self.backend.generate(requests, JudgeAnswer, sampling)
        converted = []
        for output in outputs:
            parsed, verdict = parse_output(output, JudgeAnswer)
            if parsed is None:
                converted.append(
                    RawOutput(output.key, "", 0, error=f"judge: {verdict.reason} {verdict.detail}")
                )
                continue
            yes = 1.0 if parsed.answer == "yes" else 0.0  # type: ignore[attr-defined]
            converted.append(
                RawOutput(output.key, json.dumps({"yes": yes, "no": 1 - yes}), output.output_tokens)
            )
        return converted

    def close(self) -> None:  # the wrapped backend is closed by its owner
        return None


@dataclass
class _Run:
    settings: GroundedSettings
    backend: GenerationBackend
    judge: JudgeBackend
    store: RequestStore
    similarity: Similarity | None
    document_frequency: Callable[[str], float] | None
    rejected: list[dict[str, Any]] = field(default_factory=list)
    decompositions: list[dict[str, Any]] = field(default_factory=list)
    outputs: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    stats: Counter[str] = field(default_factory=Counter)
    same_thing: dict[str, float] = field(default_factory=dict)  # "span -> substitute": P(yes) of SAME_THING
    tokens: int = 0
    seconds: float = 0.0

    @property
    def corpus_names(self) -> Callable[[str], bool] | None:
        """Whether the corpus writes a phrase (``verify.substitute_in_corpus`` with a :class:`CorpusVocabulary`)."""
        if self.settings.verify.substitute_in_corpus and isinstance(
            self.document_frequency, CorpusVocabulary
        ):
            return self.document_frequency.names
        return None

    def messages(
        self, template: str, item: GroundedItem, sentences: list[str], **extra: Any
    ) -> list[dict[str, str]]:
        profile = load_profiles()[item.profile]
        system = render_template("grounded_system", profile=profile)
        user = render_template(f"grounded_{template}", sentences=sentences, query=item.query, **extra)
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def call(
        self,
        stage: str,
        attempt: int,
        schema: type[BaseModel],
        item: GroundedItem,
        messages: list[dict[str, str]],
        tag: str = "",
    ) -> RawOutput:
        """One journaled request (``tag`` tells apart several requests of one stage for the same query)."""
        judge = stage in SCORED_STAGES
        sampling = (
            SamplingConfig(max_new_tokens=1, temperature=0.0, top_p=1.0)
            if judge
            else self.settings.stage_sampling(stage, attempt)
        )
        seed = derive_seed(self.settings.seed, item.query_id, stage, tag, attempt)
        key = request_key(
            template=template_version("grounded"),
            schema=schema_hash(schema),
            model=self.backend.model_id,
            backend=self.settings.backend_signature + ("+scores" if judge and self.judge.scores else ""),
            sampling=asdict(sampling),
            seed=seed,
            row=item.query_id,
            stage=stage,
            tag=tag,
            attempt=attempt,
            messages=fingerprint(messages),
        )
        meta = {
            "stage": stage,
            "query_id": item.query_id,
            "attempt": attempt,
            "model_id": self.backend.model_id,
        }
        engine: Any = self.judge if judge else self.backend
        try:
            output = self.store.run(
                [GenerationRequest(key, messages, seed)], [meta], engine, schema, sampling, progress=False
            )[0]
        except ConfigError as err:  # this request's schema cannot be compiled (e.g. by llama.cpp's converter)
            output = RawOutput(key, "", 0, error=f"schema not compiled: {err}")
        record = self.store.records.get(output.key, {})
        self.tokens += output.output_tokens
        self.seconds += float(record.get("seconds", 0.0))
        self.outputs[f"{stage}/total"] += 1
        return output

    def reject(self, item: GroundedItem, stage: str, verdict: Verdict, **extra: Any) -> None:
        assert verdict.reason is not None
        self.reasons[verdict.reason] += 1
        self.rejected.append(
            {
                "query_id": item.query_id,
                "stage": stage,
                "reason": verdict.reason,
                "detail": verdict.detail,
                **extra,
            }
        )


def _evidences(item: GroundedItem, settings: GroundedSettings) -> list[_Evidence]:
    """The positives that have evidence options, with their spans and sentences: most query-side spans first
    (ties: the judged order)."""
    aliases = list(item.answers)
    found = []
    for index, (positive_id, text) in enumerate(item.positives):
        passage = " ".join(text.split())
        spans = query_side_spans(
            extract_spans(passage, settings.use_spacy),
            item.query,
            aliases,
            settings.min_overlap,
            settings.max_spans,
        )
        sentences = split_sentences(passage)[: settings.max_sentences]
        title = " ".join(item.titles[index].split()) if index < len(item.titles) else ""
        evidence = _Evidence(positive_id, passage, spans, sentences, tuple(aliases), title)
        if evidence.options:
            found.append(evidence)
    return sorted(found, key=lambda e: -len(e.spans))


def _decompose(run: _Run, item: GroundedItem, evidence: _Evidence) -> tuple[BaseModel, RawOutput, int] | None:
    schema = decomposition_schema(tuple(s.text for s in evidence.spans), tuple(evidence.sentence_options))
    messages = run.messages(
        "decompose",
        item,
        evidence.sentences,
        spans=[s.text for s in evidence.spans],
        sentence_options=list(evidence.sentence_options),
        min_requirements=MIN_REQUIREMENTS,
        max_requirements=MAX_REQUIREMENTS,
    )
    for attempt in range(run.settings.max_retries + 1):
        output = run.call("decompose", attempt, schema, item, messages)
        parsed, verdict = parse_output(output, schema)
        if parsed is not None:
            run.outputs["decompose/valid"] += 1
            return parsed, output, attempt
        run.reject(item, "decompose", verdict, attempt=attempt, request_key=output.key, raw=output.text)
    return None


KIND_WORDS = {"name": "name", "noun_phrase": "term"}


def kind_word(span: Span) -> str:
    """What the substitute prompt calls the span's kind. A lower-case phrase is a "term" and a one-token code a
    "symbol", whatever spaCy labelled them: asked for "names" like "oocyte" or "SOX2", the 1.5B answers "Tom Hanks"
    or "Karl Marx"."""
    if E.is_code(span.text) and " " not in span.text.strip():
        return "symbol"
    if span.text[:1].islower():
        return "term"
    return KIND_WORDS.get(span.kind, span.kind)


# A retry after invalid substitutes continues the conversation with what was wrong (the 1.5B mostly repeats the
# original span or a query word: 152 of 322 SciFact substitutes, before this feedback). In code, not in a
# template, so that first attempts keep their journaled keys.
SUBSTITUTE_FEEDBACK = (
    "These cannot be used: {rejected}. Name one or two other real {kind}s of the same type as {span}: not "
    "{span} itself, not a part or a longer form of it, nothing the passage already names{words}. Answer in "
    'JSON: {{"substitutes": [...]}}.'
)


def _substitute_feedback(span: Span, kind: str, query: str, rejected: list[str]) -> str:
    span_tokens = set(content_tokens(span.text))
    query_words = [t for t in dict.fromkeys(content_tokens(query)) if t not in span_tokens]
    words = (
        f", and without the query's words {', '.join(json.dumps(w) for w in query_words)}"
        if query_words
        else ""
    )
    return SUBSTITUTE_FEEDBACK.format(
        rejected=", ".join(json.dumps(r) for r in rejected),
        kind=kind,
        span=json.dumps(span.text),
        words=words,
    )


# Asked when a query has fewer than min_kept negatives and a span proved editable: more of the same kind.
MORE_SUBSTITUTES = (
    "Good. Now name one or two more real {kind}s of the same type as {span}, different from {used}. Answer in "
    'JSON: {{"substitutes": [...]}}.'
)


def _substitute(
    run: _Run,
    item: GroundedItem,
    evidence: _Evidence,
    span: Span,
    requirement: str,
    used: Sequence[str] = (),
) -> tuple[list[str], RawOutput] | None:
    """Up to :data:`MAX_SUBSTITUTES` valid substitutes for ``span`` (invalid ones are rejected with a reason).

    A retry after a parsed answer whose substitutes were all invalid gets that answer and
    :data:`SUBSTITUTE_FEEDBACK` as two more turns of the conversation. With ``used`` (substitutes already
    applied), the conversation continues with :data:`MORE_SUBSTITUTES` instead, as its own journaled request.
    """
    kind = kind_word(span)
    messages = run.messages(
        "substitute",
        item,
        evidence.sentences,
        span=span.text,
        kind=kind,
        requirement=requirement,
        forbidden=list(item.answers),
    )
    if used:
        messages += [
            {"role": "assistant", "content": json.dumps({"substitutes": list(used)})},
            {
                "role": "user",
                "content": MORE_SUBSTITUTES.format(
                    kind=kind, span=json.dumps(span.text), used=", ".join(json.dumps(u) for u in used)
                ),
            },
        ]
    rejected: list[str] = []
    base = messages
    for attempt in range(run.settings.max_retries + 1):
        output = run.call(
            "substitute", attempt, Substitute, item, messages, tag=f"{span.text}#more" if used else span.text
        )
        parsed, verdict = parse_output(output, Substitute)
        if parsed is None:
            run.reject(item, "substitute", verdict, attempt=attempt, span=span.text, raw=output.text)
            continue
        run.outputs["substitute/valid"] += 1
        valid: list[str] = []
        for substitute in dict.fromkeys(x.strip() for x in parsed.substitutes):  # type: ignore[attr-defined]
            if substitute.lower() in {u.lower() for u in used}:
                run.stats["substitutes/repeated"] += 1
                continue
            verdict = _check_substitute(run, item, evidence, span, substitute)
            if verdict.kept:
                valid.append(substitute)
            else:
                rejected.append(substitute)
                run.reject(item, "substitute", verdict, attempt=attempt, span=span.text, raw=output.text)
        if valid:
            return valid, output
        feedback = _substitute_feedback(span, kind, item.query, list(dict.fromkeys(rejected)))
        messages = [
            *base,
            {"role": "assistant", "content": output.text},
            {"role": "user", "content": feedback},
        ]
    return None


def _check_substitute(
    run: _Run, item: GroundedItem, evidence: _Evidence, span: Span, substitute: str
) -> Verdict:
    """The substitute rules (:func:`.verify.check_substitute`), then the LLM's same-thing check."""
    verdict = check_substitute(
        substitute,
        span,
        item.query,
        item.answers,
        evidence.passage,
        run.document_frequency,
        run.settings.verify.query_df,
        run.corpus_names,
        run.settings.verify.generic_df,
    )
    if verdict.kept and _may_be_a_synonym(span) and run.settings.verify.same_thing_threshold is not None:
        p_same = _same_thing(run, item, span, substitute)
        run.same_thing[f"{span.text} -> {substitute}"] = round(p_same, 4)
        verdict = check_same_thing(p_same, run.settings.verify)
    return verdict


def _corpus_substitutes(
    run: _Run, item: GroundedItem, evidence: _Evidence, span: Span, used: Sequence[str]
) -> list[str]:
    """Up to :data:`MAX_SUBSTITUTES` valid siblings of ``span`` from ``item.neighbours``, most similar first,
    at most ``corpus_substitutes`` of them checked (:mod:`.siblings`)."""
    tried = {u.lower() for u in used}
    candidates = [
        c
        for c in sibling_candidates(span, item.neighbours, run.settings.use_spacy)
        if c.lower() not in tried and not E.mentions(evidence.passage, c)
    ]
    run.stats["substitutes/corpus_candidates"] += len(candidates)
    valid: list[str] = []
    for substitute in rank_siblings(span, candidates, run.similarity)[: run.settings.corpus_substitutes]:
        verdict = _check_substitute(run, item, evidence, span, substitute)
        if not verdict.kept:
            run.reject(item, "substitute", verdict, span=span.text, substitute_source="corpus")
            continue
        valid.append(substitute)
        if len(valid) >= MAX_SUBSTITUTES:
            break
    return valid


# Asked of every substitute that passed the rules: the 1.5B proposes synonyms ("T cells" -> "T lymphocytes",
# "infertility" -> "sterility"), which the encoder cannot tell from siblings (MiniLM cos infertility/sterility
# 0.445, CDX2/CDX3 0.872). In code, not in a template, so the other stages keep their journaled keys.
SAME_THING = (
    'Do "{span}" and "{substitute}" name the same thing: one entity or concept under two names (synonyms, an '
    "abbreviation and its long form, a spelling variant, a broader or plain-language name for it)? Answer yes "
    "or no."
)
SCORED_STAGES = frozenset({"judge", "same_thing"})


def _may_be_a_synonym(span: Span) -> bool:
    """Terms and names may have synonyms; a person's name, a date or a number has none worth a call."""
    return not span.is_person and span.kind not in NUMERIC_KINDS


def _same_thing(run: _Run, item: GroundedItem, span: Span, substitute: str) -> float:
    """The judge's ``P(yes)`` that ``substitute`` is another name of ``span`` (:data:`SAME_THING`)."""
    system = run.messages("judge", item, [])[0]
    question = SAME_THING.format(span=span.text, substitute=substitute)
    messages = [system, {"role": "user", "content": question}]
    output = run.call("same_thing", 0, JudgeAnswer, item, messages, tag=f"{span.text}->{substitute}")
    if output.error:
        raise RuntimeError(f"same-thing check failed for query {item.query_id}: {output.error}")
    run.outputs["same_thing/valid"] += 1
    return float(json.loads(output.text)["yes"])


def _judge(run: _Run, item: GroundedItem, text: str) -> float:
    messages = run.messages("judge", item, split_sentences(text)[: run.settings.max_sentences])
    output = run.call("judge", 0, JudgeAnswer, item, messages, tag=fingerprint(text)[:16])
    if output.error:
        raise RuntimeError(f"judge failed for query {item.query_id}: {output.error}")
    run.outputs["judge/valid"] += 1
    return float(json.loads(output.text)["yes"])


def _candidate_edits(
    run: _Run, item: GroundedItem, evidence: _Evidence, decomposition: BaseModel
) -> list[dict[str, Any]]:
    """One edit per distinct critical requirement, with its provenance (before the verification)."""
    spans = {s.text: s for s in evidence.spans}
    sentence_options = evidence.sentence_options
    seen: set[tuple[str, str]] = set()
    edits = []
    for index, requirement in enumerate(requirements_of(decomposition)):
        strategy = requirement["strategy"]
        run.stats[f"requirements/{strategy}"] += 1
        if not requirement["critical"]:
            run.stats["requirements/not_critical"] += 1
            continue
        span = spans.get(requirement["evidence"])
        operation = "replace" if span is not None and strategy in REPLACE_STRATEGIES else "drop_sentence"
        if (requirement["evidence"], operation) in seen:
            run.stats["requirements/repeated"] += 1
            continue
        seen.add((requirement["evidence"], operation))
        info = {
            "requirement": requirement["requirement"],
            "requirement_index": index,
            "evidence": requirement["evidence"],
            "strategy_type": strategy,
        }
        if span is not None and operation == "replace":
            edits += _substitute_edits(run, item, evidence, span, info)
            continue
        else:
            sentence = sentence_options.get(requirement["evidence"])
            if sentence is None:
                run.reject(item, "edit", Verdict("span_not_found", requirement["evidence"]), **info)
                continue
            edit = E.drop_sentence(evidence.passage, sentence)
            info.update(span_kind="sentence")
        edits.append({"edit": edit, "span": span, **info})
    answer_drop = _answer_sentence_drop(item, evidence)
    if answer_drop is not None and all(e["edit"].text != answer_drop["edit"].text for e in edits):
        run.stats["requirements/answer_sentence"] += 1  # not when the LLM's own drop is the same edit
        edits.append(answer_drop)
    return edits


def _substitute_edits(
    run: _Run,
    item: GroundedItem,
    evidence: _Evidence,
    span: Span,
    info: dict[str, Any],
    used: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """One replacement edit per valid substitute of ``span`` (``used``: ask for others than these)."""
    found = _substitute(run, item, evidence, span, info["requirement"], used)
    if found is None:
        if run.settings.corpus_substitutes <= 0 or not item.neighbours:
            return []
        substitutes = _corpus_substitutes(run, item, evidence, span, used)
        run.stats["substitutes/from_corpus"] += len(substitutes)
        provenance = {**info, "span_kind": span.kind, "substitute_source": "corpus"}
    else:
        substitutes, output = found
        provenance = {**info, "span_kind": span.kind, "substitute_request_key": output.key}
    return [
        {
            "edit": E.replace_mentions(evidence.passage, span, x),
            "span": span,
            "substitute": x,
            "p_same_thing": run.same_thing.get(f"{span.text} -> {x}"),
            **provenance,
        }
        for x in substitutes
    ]


def _more_edits(
    run: _Run,
    item: GroundedItem,
    evidence: _Evidence,
    edits: list[dict[str, Any]],
    kept: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """For each span that already gave a kept replacement: edits with substitutes other than those tried."""
    spans = {s.text: s for s in evidence.spans}
    more: list[dict[str, Any]] = []
    for text in dict.fromkeys(
        k["span"] for k in kept if k["edit"]["operation"] == "replace" and k.get("span")
    ):
        if text not in spans:
            continue
        tried = [e["substitute"] for e in edits if e.get("span") is spans[text] and "substitute" in e]
        info = next(
            {k: e[k] for k in ("requirement", "requirement_index", "evidence", "strategy_type")}
            for e in edits
            if e.get("span") is spans[text]
        )
        run.stats["substitutes/more_requests"] += 1
        more += _substitute_edits(run, item, evidence, spans[text], info, tried)
    return more


def _about_the_answer(title: str, answers: Sequence[str]) -> bool:
    """Whether the passage's title names (a capitalised word of) a gold answer: the answer is its subject.

    Dropping sentences then leaves the answer named ("Gerald McRaney" for "Gerald Lee McRaney").
    """
    named = {w.strip(",.()").lower() for a in answers for w in a.split() if w[:1].isupper() and len(w) > 2}
    return bool(title) and bool(named & {w.strip(",.()").lower() for w in title.split()})


def _answer_sentence_drop(item: GroundedItem, evidence: _Evidence) -> dict[str, Any] | None:
    """The positive without the body sentences that state a gold answer (None: no answer stated, or the title
    names the answer, which no drop removes)."""
    if not item.answers or _about_the_answer(evidence.title, item.answers):
        return None
    body = E.body_of(evidence.passage, evidence.title)
    stating = [s for s in split_sentences(body) if leaked_answer(s, item.answers, item.query) is not None]
    if not stating:
        return None
    return {
        "edit": E.drop_sentences(evidence.passage, stating),
        "span": None,
        "requirement": "the sentence that states the answer",
        "requirement_index": -1,
        "requirement_source": "answer",
        "evidence": " / ".join(stating)[:200],
        "strategy_type": "relation_break",
        "span_kind": "sentence",
    }


def _verify(
    run: _Run,
    item: GroundedItem,
    evidence: _Evidence,
    edits: list[dict[str, Any]],
    positive_p_yes: float,
    already: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The edits that pass every check, at most ``num_negatives - len(already)`` (``already``: kept texts)."""
    cfg = run.settings.verify
    passing: list[dict[str, Any]] = []
    for candidate in edits:
        edit: E.Edit = candidate["edit"]
        verdict = check_edit(
            edit,
            evidence.passage,
            item.query,
            item.answers,
            candidate["strategy_type"],
            candidate["span"],
            cfg,
            [*already, *(c["edit"].text for c in passing)],
            run.document_frequency,
            evidence.title,
        )
        if not verdict.kept:
            run.reject(
                item, "verify", verdict, text=edit.text, edit=_edit_record(edit), **_provenance(candidate)
            )
            continue
        passing.append(candidate)
    sims: list[float] = []
    if passing and run.similarity is not None:
        sims = run.similarity(item.query, [evidence.passage, *[c["edit"].text for c in passing]])
        if evidence.core is None:
            sentences = split_sentences(evidence.passage)
            evidence.core = core_sentences(sentences, run.similarity(item.query, sentences), cfg)
    kept: list[dict[str, Any]] = []
    for i, candidate in enumerate(passing):
        if len(kept) + len(already) >= run.settings.num_negatives:
            run.stats["edits/over_cap"] += 1
            continue
        edit = candidate["edit"]
        record = {
            "text": edit.text,
            "positive_id": evidence.positive_id,
            "edit": _edit_record(edit),
            **_provenance(candidate),
        }
        if sims:
            record["similarity"] = {
                "query_negative": round(sims[i + 1], 4),
                "query_positive": round(sims[0], 4),
            }
            verdict = check_similarity(sims[i + 1], sims[0], cfg)
            if verdict.kept:
                verdict = check_core(edit.text, evidence.core or [])
            if not verdict.kept:
                run.reject(item, "verify", verdict, **record)
                continue
        if cfg.judge:
            record["judge_p_yes"] = round(_judge(run, item, edit.text), 4)
            verdict = check_judge(record["judge_p_yes"], positive_p_yes, cfg)
            if not verdict.kept:
                run.reject(item, "verify", verdict, **record)
                continue
        kept.append(record)
    return kept


def _edit_record(edit: E.Edit) -> dict[str, Any]:
    return {
        "operation": edit.operation,
        "original": edit.original,
        "replacement": edit.replacement,
        "mentions": edit.mentions,
        **({"aliases": list(edit.aliases)} if edit.aliases else {}),
    }


def _provenance(candidate: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in candidate.items() if k not in ("edit", "span") and v is not None} | {
        "span": candidate["span"].text if candidate["span"] is not None else None
    }


def _process(run: _Run, item: GroundedItem) -> dict[str, Any]:
    evidences = _evidences(item, run.settings)
    first_positive = item.positives[0][0] if item.positives else ""
    if not evidences:
        run.reject(item, "evidence", Verdict("no_evidence", "no query-side span and no sentence"))
        return {"query_id": item.query_id, "positive_id": first_positive, "negatives": []}
    kept: list[dict[str, Any]] = []
    for evidence in evidences:
        if len(kept) >= min(run.settings.min_kept, run.settings.num_negatives):
            break
        run.stats["positives/edited"] += 1
        kept += _edit_positive(run, item, evidence, [k["text"] for k in kept])
    negatives = [{"source": run.settings.source, "target": "positive", **k} for k in kept]
    for negative in negatives:
        run.stats[f"kept/{negative['strategy_type']}"] += 1
    return {"query_id": item.query_id, "positive_id": evidences[0].positive_id, "negatives": negatives}


def _edit_positive(
    run: _Run, item: GroundedItem, evidence: _Evidence, already: list[str]
) -> list[dict[str, Any]]:
    """Decompose, edit and verify one positive of ``item`` (``already``: texts kept from other positives)."""
    run.stats["queries/with_query_spans"] += bool(evidence.spans) and not already
    decomposed = _decompose(run, item, evidence)
    if decomposed is None:
        return []
    decomposition, output, attempt = decomposed
    info: dict[str, Any] = {
        "query_id": item.query_id,
        "positive_id": evidence.positive_id,
        "request_key": output.key,
        "attempt": attempt,
        "decomposition": decomposition.model_dump(),
        "offered_spans": [
            {"text": s.text, "kind": s.kind, "query_overlap": s.query_overlap} for s in evidence.spans
        ],
        "offered_sentences": len(evidence.sentence_options),
    }
    positive_p_yes = _judge(run, item, evidence.passage) if run.settings.verify.judge else 1.0
    info["judge_p_yes_positive"] = round(positive_p_yes, 4)
    run.decompositions.append(info)
    edits = _candidate_edits(run, item, evidence, decomposition)
    kept = _verify(run, item, evidence, edits, positive_p_yes, already)
    if kept and len(already) + len(kept) < run.settings.min_kept:
        more = _more_edits(run, item, evidence, edits, kept)
        kept += _verify(run, item, evidence, more, positive_p_yes, [*already, *(k["text"] for k in kept)])
    # spans already edited, or judged not critical by the decomposition (breaking them keeps the passage relevant)
    tried = {e["span"].text for e in edits if e.get("span") is not None}
    tried |= {r["evidence"] for r in requirements_of(decomposition) if not r["critical"]}
    for span in [s for s in evidence.spans if s.text not in tried][: run.settings.fallback_spans]:
        if len(already) + len(kept) >= run.settings.min_kept:
            break
        extra = _fallback_edits(run, item, evidence, span)
        kept += _verify(run, item, evidence, extra, positive_p_yes, [*already, *(k["text"] for k in kept)])
    return kept


def _fallback_edits(run: _Run, item: GroundedItem, evidence: _Evidence, span: Span) -> list[dict[str, Any]]:
    """Replacement edits of a query-named span that no critical requirement anchored (a query short of
    ``min_kept``): the query names it, so another entity or value in its place breaks what the query asks."""
    numeric = span.kind in NUMERIC_KINDS or any(c.isdigit() for c in span.text)
    info = {
        "requirement": f"the query's {KIND_WORDS.get(span.kind, span.kind)} {span.text}"[:REQUIREMENT_CHARS],
        "requirement_index": -1,
        "requirement_source": "query_span",
        "evidence": span.text,
        "strategy_type": "constraint_violation" if numeric else "entity_shift",
    }
    run.stats["requirements/query_span_fallback"] += 1
    return _substitute_edits(run, item, evidence, span, info)


def run_grounded(
    items: Sequence[GroundedItem],
    backend: GenerationBackend,
    store: RequestStore,
    settings: GroundedSettings,
    similarity: Similarity | None = None,
    document_frequency: Callable[[str], float] | None = None,
) -> PipelineResult:
    """Grounded counterfactual edits for ``items`` (module docstring); resumable through ``store``."""
    run = _Run(settings, backend, JudgeBackend(backend), store, similarity, document_frequency)
    rows = []
    started = time.perf_counter()
    bar = tqdm(items, desc="grounded edits", unit="query", disable=not settings.progress)
    for item in bar:
        rows.append(_process(run, item))
        kept = sum(len(r["negatives"]) for r in rows)
        bar.set_postfix(kept=kept, with_negatives=sum(1 for r in rows if r["negatives"]))
    bar.close()
    return PipelineResult(
        rows, run.rejected, run.decompositions, _counts(run, rows, time.perf_counter() - started)
    )


def _counts(run: _Run, rows: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    stages = sorted({k.split("/")[0] for k in run.outputs})
    total = sum(run.outputs[f"{s}/total"] for s in stages if s != "judge")
    valid = sum(run.outputs[f"{s}/valid"] for s in stages if s != "judge")
    kept = sum(len(r["negatives"]) for r in rows)
    with_negatives = sum(1 for r in rows if r["negatives"])
    edit_rejections = sum(
        n for r, n in run.reasons.items() if r not in ("backend_error", "invalid_json", "schema_violation")
    )
    return {
        "method": "grounded",
        "queries": len(rows),
        "queries_with_negatives": with_negatives,
        "query_yield": round(with_negatives / len(rows), 4) if rows else 0.0,
        "kept_per_query_with_negatives": round(kept / with_negatives, 3) if with_negatives else 0.0,
        "requests": total,
        "schema_valid": valid,
        "validity_rate": round(valid / total, 4) if total else 0.0,
        "per_stage": {
            s: {"requests": run.outputs[f"{s}/total"], "valid": run.outputs[f"{s}/valid"]} for s in stages
        },
        "negatives_kept": kept,
        "negatives_rejected": edit_rejections,
        "kept_rate": round(kept / (kept + edit_rejections), 4) if kept + edit_rejections else 0.0,
        "rejections": dict(sorted(run.reasons.items())),
        "stats": dict(sorted(run.stats.items())),
        "output_tokens": run.tokens,
        "generation_seconds": round(run.seconds, 3),
        "tokens_per_s": round(run.tokens / run.seconds, 2) if run.seconds else None,
        "seconds_per_query": round(wall / len(rows), 2) if rows else None,
    }
