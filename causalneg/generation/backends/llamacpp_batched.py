"""Batched multi-sequence decoding for the ``llamacpp`` backend: several requests decoded together.

On a CPU, decoding one sequence reads every weight once per token and leaves the cores waiting on memory;
decoding several sequences in one ``llama_decode`` call reads the weights once for all of them. This module
runs up to ``n_seq`` requests at a time in one llama.cpp context of its own (next to the sequential
``Llama``'s, sharing the model weights):

- **KV cache.** One stream per sequence (``kv_unified=False``, ``n_ctx`` cells each), so attention runs over
  a sequence's own cells only. llama.cpp splits a batch into micro-batches of *consecutive* sequence ids
  (``split_equal``), and each micro-batch is a pass over the weights; so the active sequences are kept in
  slots ``0..k-1``: when one ends and no request waits, the highest slot moves into the gap
  (``llama_memory_seq_cp`` across streams copies the whole stream, a memcpy).
- **Continuous batching.** A finished sequence's slot takes the next request at once; its prompt is
  evaluated in the same ``llama_decode`` calls as the other slots' next tokens (at most ``n_batch`` tokens
  a call).
- **Prefix reuse.** A new prompt starts from the slot whose KV holds the longest common prefix with it:
  its own slot (the cells after the prefix are dropped) or another one (its stream is copied, then cut). A
  shared system prompt is thus evaluated once per call and copied to the other slots; slots keep their
  contents between calls. A prompt that would copy from a slot still evaluating that prefix waits for it.
- **Constraint**, one state per sequence: an llguidance matcher (:class:`GuidanceConstraint`; for
  ``grammar=llama_cpp`` over the same GBNF grammar, converted by :func:`gbnf_to_lark`) gives the full
  vocabulary mask in ~0.2 ms. llama.cpp's grammar sampler (:class:`LlamaGrammarConstraint`, the fallback)
  checks every vocabulary entry, ~6 ms per token and sequence on SmolLM2's 49k entries, more on Qwen's
  151k: paid per sequence, that would eat the batching gain. Checking only the most likely candidates does
  not work for top-p: the cut at 0.95 needs the masked normaliser, so every entry (measured: most steps
  had to widen to the whole vocabulary).
- **Sampling**, per sequence, as the sequential chain does it: grammar mask, top-p over the masked
  distribution at temperature 1, then temperature and a draw by llama.cpp's own ``temp -> dist(seed)``
  chain over the nucleus, seeded with the request's seed (greedy at temperature 0). So an output depends on
  its request only, not on which other requests share the batch, up to floating-point differences of
  batched matrix products (which can flip a sampled token, and the rest of the output with it).
"""

from __future__ import annotations

import ctypes
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FIRST_CANDIDATES = 64  # candidates sorted for the top-p cut before widening (x4)
MIN_SHARED = 16  # shortest common prefix worth copying another slot's stream for
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)], align=True)


@dataclass
class Job:
    """One request in the batched path: its prompt, limits, sampler and what it has produced so far."""

    index: int
    prompt: list[int]
    max_tokens: int
    sampler: SequenceSampler
    output: list[int] = field(default_factory=list)
    fed: int = 0  # tokens of prompt + output now in this slot's KV cache
    wait_for: tuple[int, int] | None = None  # (source slot, prefix length) to copy once the source has it
    finish: str | None = None
    error: str | None = None

    def pending(self) -> list[int]:
        """Tokens to evaluate next: the rest of the prompt, or the last sampled token."""
        sequence = self.prompt + self.output
        return sequence[self.fed :]


def _flatten_optionals(gbnf: str) -> str:
    """``(x (x (x)?)?)?`` -> ``x{0,3}``: llama-cpp-python spells maxLength as nested optionals, too deep for Lark."""
    text = re.sub(r"\(([A-Za-z0-9-]+)\)\?", r"\1{0,1}", gbnf)
    nested = re.compile(r"\(([A-Za-z0-9-]+) \1\{0,(\d+)\}\)\?")
    while True:
        new = nested.sub(lambda m: f"{m.group(1)}{{0,{int(m.group(2)) + 1}}}", text)
        if new == text:
            return text
        text = new


def gbnf_to_lark(gbnf: str) -> str:
    """llama.cpp's GBNF grammar as llguidance Lark: the same language, rules renamed ``r<i>`` first.

    llguidance's own converter derives Lark names from the GBNF ones and fails when two collide after case
    folding (``QueryInfo`` and ``query-info``), so every rule but ``root`` gets a neutral name first.
    """
    from llguidance import gbnf_to_lark as convert

    rules = convert.GrammarParser().parse(_flatten_optionals(gbnf))
    names = {name: "root" if name == "root" else f"r{i}" for i, name in enumerate(rules)}

    def rename(node: Any) -> None:
        if isinstance(node, convert.RuleRefNode):
            node.name = names[node.name]
        for child in node.children():
            rename(child)

    renamed = {}
    for name, rule in rules.items():
        rename(rule)
        rule.name = names[name]
        renamed[rule.name] = rule
    convert.resolve(renamed)
    return "%llguidance {}\n\n" + "\n".join(str(r) for r in sorted(renamed.values(), key=lambda r: r.order))


def guidance_tokenizer(llm: Any) -> Any:
    """An ``llguidance.LLTokenizer`` over ``llm``'s vocabulary, every end-of-generation token as EOS (~1 s)."""
    import warnings

    import llama_cpp
    import llguidance.llamacpp

    vocab = llm._model.vocab
    n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
    eog = [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    with warnings.catch_warnings():  # llguidance calls a deprecated llama_cpp function per vocabulary entry
        warnings.filterwarnings("ignore", "llama_token_get_attr", DeprecationWarning)
        return llguidance.llamacpp.lltokenizer_from_vocab(vocab, eos_token=eog or None)


class GuidanceConstraint:
    """A JSON-schema constraint as llguidance matchers (one per sequence) over llama.cpp's vocabulary.

    ``tokenizer``: an ``llguidance.LLTokenizer``; ``grammar``: an llguidance grammar spec
    (``LLMatcher.grammar_from_lark`` / ``grammar_from_json_schema``). Raises ValueError if it does not compile.
    """

    def __init__(self, tokenizer: Any, grammar: str, n_vocab: int) -> None:
        import llguidance

        self._llg, self.tokenizer, self.grammar, self.n_vocab = llguidance, tokenizer, grammar, n_vocab
        probe = llguidance.LLMatcher(tokenizer, grammar)
        if probe.is_error():
            raise ValueError(f"llguidance rejects the grammar: {probe.get_error()[:300]}")

    def start(self) -> GuidanceState:
        return GuidanceState(self)


class GuidanceState:
    """One sequence's llguidance matcher."""

    def __init__(self, constraint: GuidanceConstraint) -> None:
        import llguidance.numpy

        self._numpy, self.n_vocab = llguidance.numpy, constraint.n_vocab
        self.matcher = constraint._llg.LLMatcher(constraint.tokenizer, constraint.grammar)
        self.bitmask = llguidance.numpy.allocate_token_bitmask(1, constraint.tokenizer.vocab_size)

    def valid(self, logits: np.ndarray) -> np.ndarray:
        self._numpy.fill_next_token_bitmask(self.matcher, self.bitmask)
        bits = np.unpackbits(self.bitmask.view(np.uint8), bitorder="little")[: self.n_vocab]
        mask: np.ndarray = bits.astype(bool)
        return mask

    def accept(self, token: int) -> bool:
        return bool(self.matcher.consume_token(token))

    def close(self) -> None:
        pass


class GuidanceLogitsProcessor:
    """A llama-cpp-python logits processor that applies one sequence's llguidance mask (sequential path).

    Called before each sampling step with every token the context holds (``input_ids``: prompt, then the
    output so far) and the next-token logits in id order (``(n_vocab,)``): it feeds the matcher the output
    tokens it has not seen, then returns the logits with every token the grammar forbids at ``-inf``.
    llama.cpp's sampler chain then runs as with its own grammar sampler (top-p over the masked distribution,
    temperature, seeded draw). ``prompt_length``: tokens before the output.

    llama-cpp-python calls it from a ctypes callback, where an exception would be printed and lost: a failure
    is kept in ``error`` instead (the caller turns it into the request's error) and the logits pass unmasked.
    """

    def __init__(self, state: GuidanceState, prompt_length: int) -> None:
        self.state, self.prompt_length, self.fed = state, int(prompt_length), 0
        self.error: str | None = None

    def __call__(self, input_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        if self.error is not None:
            return logits
        for token in input_ids[self.prompt_length + self.fed :]:
            if not self.state.accept(int(token)):
                self.error = f"llguidance rejected the sampled token {int(token)}"
                return logits
            self.fed += 1
        allowed = self.state.valid(logits)
        if not allowed.any():
            self.error = "llguidance allows no next token"
            return logits
        masked: np.ndarray = np.where(allowed, logits, -np.inf).astype(np.float32, copy=False)
        return masked


class LlamaGrammarConstraint:
    """The fallback constraint: llama.cpp grammar samplers (when llguidance is missing or cannot compile)."""

    def __init__(self, vocab: Any, grammar: Any) -> None:
        self.vocab, self.grammar = vocab, grammar

    def start(self) -> LlamaGrammarState:
        return LlamaGrammarState(self.vocab, self.grammar)


class LlamaGrammarState:
    """One sequence's llama.cpp grammar sampler, checked against the whole vocabulary at every step."""

    def __init__(self, vocab: Any, grammar: Any) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.sampler: Any = llama_cpp.llama_sampler_init_grammar(
            vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
        )
        if not self.sampler:
            raise ValueError("llama.cpp could not parse the grammar")

    def valid(self, logits: np.ndarray) -> np.ndarray:
        data = _token_data(np.arange(len(logits), dtype=np.int32), logits)
        _apply(self.sampler, data)  # sets rejected tokens' logits to -inf, in place, same order
        mask: np.ndarray = data["logit"] != -np.inf
        return mask

    def accept(self, token: int) -> bool:
        self._lib.llama_sampler_accept(self.sampler, token)
        return True

    def close(self) -> None:
        if self.sampler:
            self._lib.llama_sampler_free(self.sampler)
        self.sampler = None


def _token_data(ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
    data = np.zeros(len(ids), dtype=TOKEN_DATA)
    data["id"], data["logit"] = ids, logits
    return data


def _apply(sampler: Any, data: np.ndarray) -> int:
    """``llama_sampler_apply`` over ``data`` (TOKEN_DATA); the selected token id, or -1."""
    import llama_cpp

    array = llama_cpp.llama_token_data_array(
        data=data.ctypes.data_as(llama_cpp.llama_token_data_p), size=len(data), selected=-1, sorted=False
    )
    llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
    selected = int(array.selected)
    return int(data["id"][selected]) if 0 <= selected < array.size else -1


class SequenceSampler:
    """The sequential path's sampling for one sequence: grammar mask, top-p, temperature, seeded draw.

    ``state``: the sequence's constraint (:class:`GuidanceState` / :class:`LlamaGrammarState`);
    ``temperature <= 0`` is greedy. Top-p is taken over the masked distribution at temperature 1, as the
    sequential chain does (grammar, top-p, temperature, dist); the draw is llama.cpp's own ``temp -> dist``
    over the nucleus, seeded with ``seed``.
    """

    def __init__(self, state: Any, temperature: float, top_p: float, seed: int) -> None:
        import llama_cpp

        self._lib, self.state = llama_cpp, state
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.chain: Any = None
        if self.temperature > 0:
            self.chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
            llama_cpp.llama_sampler_chain_add(self.chain, llama_cpp.llama_sampler_init_temp(self.temperature))
            llama_cpp.llama_sampler_chain_add(self.chain, llama_cpp.llama_sampler_init_dist(seed))

    def sample(self, logits: np.ndarray) -> int:
        """The next token for these (V,) logits; -1 when the grammar admits none."""
        valid = self.state.valid(logits)
        if not valid.any():
            return -1
        masked = np.where(valid, logits, np.float32(-np.inf))
        if self.chain is None:
            return int(np.argmax(masked))
        # top-p >= 1 keeps every valid token, unsorted, as llama.cpp's top-p sampler does
        nucleus = np.flatnonzero(valid).astype(np.int32) if self.top_p >= 1.0 else self._nucleus(masked)
        return _apply(self.chain, _token_data(nucleus, logits[nucleus]))

    def _nucleus(self, masked: np.ndarray) -> np.ndarray:
        """Most likely first, the fewest valid tokens whose probability reaches ``top_p`` (at least one)."""
        weights = np.exp(masked - masked.max(), dtype=np.float32)
        target = self.top_p * float(weights.sum(dtype=np.float64))
        n, k = len(masked), FIRST_CANDIDATES
        while True:
            if k >= n:
                ids = np.argsort(-masked, kind="stable")
            else:
                part = np.argpartition(-masked, k)[:k]
                ids = part[np.argsort(-masked[part], kind="stable")]
            cum = np.cumsum(weights[ids], dtype=np.float64)
            if cum[-1] >= target or k >= n:
                cut = min(int(np.searchsorted(cum, target)), len(ids) - 1)
                nucleus: np.ndarray = ids[: cut + 1].astype(np.int32)
                return nucleus
            k *= 4

    def accept(self, token: int) -> bool:
        """Advance the constraint; False if it rejects ``token``."""
        ok: bool = self.state.accept(token)
        return ok

    def close(self) -> None:
        self.state.close()
        if self.chain:
            self._lib.llama_sampler_free(self.chain)
        self.chain = None


class BatchedDecoder:
    """Up to ``n_seq`` sequences decoded together in one context over ``llm``'s model; see the module docstring.

    ``llm``: the backend's ``llama_cpp.Llama`` (its model and context parameters are reused); ``n_ctx``: cells
    per sequence; ``n_batch``: tokens per ``llama_decode`` call.
    """

    def __init__(self, llm: Any, n_seq: int, n_ctx: int, n_batch: int) -> None:
        import llama_cpp

        self._lib, self.llm = llama_cpp, llm
        self.n_seq, self.n_ctx, self.n_batch = n_seq, n_ctx, max(n_batch, n_seq)
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_ctx, params.n_seq_max, params.kv_unified = n_ctx * n_seq, n_seq, False
        params.n_batch = self.n_batch
        params.n_ubatch = min(self.n_batch, max(int(params.n_ubatch), n_seq))
        params.embeddings = False
        self.ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context for {n_seq} sequences x {n_ctx} tokens")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.vocab = llm._model.vocab
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.cached: list[list[int]] = [[] for _ in range(n_seq)]  # tokens in each slot's KV cache

    # KV cache bookkeeping ------------------------------------------------------------------------------

    def _truncate(self, slot: int, keep: int) -> None:
        self._lib.llama_memory_seq_rm(self.memory, slot, keep, -1)
        del self.cached[slot][keep:]

    def _copy(self, source: int, slot: int, keep: int) -> None:
        """``slot`` := the first ``keep`` cached tokens of ``source`` (the stream is copied at the next decode)."""
        self._lib.llama_memory_seq_rm(self.memory, slot, -1, -1)
        self._lib.llama_memory_seq_cp(self.memory, source, slot, -1, -1)
        self.cached[slot] = list(self.cached[source])
        self._truncate(slot, keep)

    @staticmethod
    def _common(a: Sequence[int], b: Sequence[int]) -> int:
        n = min(len(a), len(b))
        if n == 0:
            return 0
        x, y = np.asarray(a[:n]), np.asarray(b[:n])
        diff = np.flatnonzero(x != y)
        return int(diff[0]) if len(diff) else n

    def _admit(self, slot: int, job: Job, slots: list[Job | None]) -> None:
        """Place ``job`` in ``slot``, reusing the longest cached (or being-evaluated) prefix of its prompt."""
        limit = len(job.prompt) - 1  # the last prompt token is always evaluated, for its logits
        own = min(self._common(self.cached[slot], job.prompt), limit)
        best, best_len = slot, own
        for other in range(self.n_seq):
            if other == slot:
                continue
            running = slots[other]
            known = (running.prompt + running.output) if running is not None else self.cached[other]
            if running is not None and running.wait_for is not None:
                continue
            common = min(self._common(known, job.prompt), limit)
            if common >= MIN_SHARED and common > best_len + MIN_SHARED:
                best, best_len = other, common
        if best == slot:
            self._truncate(slot, own)
            job.fed = own
        elif len(self.cached[best]) >= best_len:
            self._copy(best, slot, best_len)
            job.fed = best_len
        else:
            job.wait_for = (best, best_len)
        slots[slot] = job

    def _resolve_waits(self, slots: list[Job | None]) -> None:
        for slot, job in enumerate(slots):
            if job is None or job.wait_for is None:
                continue
            source, keep = job.wait_for
            if len(self.cached[source]) >= keep:
                self._copy(source, slot, keep)
                job.fed, job.wait_for = keep, None
            elif slots[source] is None:  # the source ended before reaching the prefix: start afresh
                self._truncate(slot, 0)
                job.fed, job.wait_for = 0, None

    def _compact(self, slots: list[Job | None]) -> None:
        """Move the highest active slots into gaps below them (one micro-batch per step, see the docstring)."""
        if any(j is not None and j.wait_for is not None for j in slots):
            return
        while True:
            free = [s for s, j in enumerate(slots) if j is None]
            busy = [s for s, j in enumerate(slots) if j is not None]
            if not free or not busy or free[0] > busy[-1]:
                return
            low, high = free[0], busy[-1]
            self._copy(high, low, len(self.cached[high]))
            self._truncate(high, 0)
            slots[low], slots[high] = slots[high], None

    # decoding ------------------------------------------------------------------------------------------

    def run(self, jobs: Sequence[Job]) -> None:
        """Decode ``jobs`` to completion, ``n_seq`` at a time; fills each job's output, finish and error."""
        lib, batch = self._lib, self.batch
        queue = deque(jobs)
        slots: list[Job | None] = [None] * self.n_seq
        try:
            while queue or any(j is not None for j in slots):
                self._resolve_waits(slots)  # before admission, which may truncate a finished source
                for slot in range(self.n_seq):
                    if slots[slot] is None and queue:
                        self._admit(slot, queue.popleft(), slots)
                if not queue:
                    self._compact(slots)
                # one llama_decode: every decoding slot's token first, then prompt chunks from what is left;
                # emitted in ascending slot ids, so that all slots share the first micro-batch
                ready = [(s, j) for s, j in enumerate(slots) if j is not None and j.wait_for is None]
                budget = self.n_batch - sum(len(j.pending()) == 1 for _, j in ready)
                n, outputs = 0, []
                for slot, job in ready:
                    pending = job.pending()
                    if len(pending) > 1:
                        pending = pending[: max(0, budget)]
                        budget -= len(pending)
                    complete = len(pending) == len(job.pending())
                    for offset, token in enumerate(pending):
                        batch.token[n] = token
                        batch.pos[n] = job.fed + offset
                        batch.n_seq_id[n] = 1
                        batch.seq_id[n][0] = slot
                        batch.logits[n] = complete and offset == len(pending) - 1
                        n += 1
                    if pending and complete:
                        outputs.append((slot, n - 1))
                    job.fed += len(pending)
                    self.cached[slot].extend(pending)
                if n == 0:
                    continue  # only waiting slots: their sources are resolved above on the next turn
                batch.n_tokens = n
                status = lib.llama_decode(self.ctx, batch)
                if status != 0:
                    raise RuntimeError(f"llama_decode returned {status}")
                for slot, row in outputs:
                    sampled = slots[slot]
                    assert sampled is not None
                    job = sampled
                    logits = np.ctypeslib.as_array(
                        lib.llama_get_logits_ith(self.ctx, row), shape=(self.n_vocab,)
                    )
                    token = job.sampler.sample(logits)
                    if token < 0:
                        job.finish, job.error = "length", "ValueError: the grammar admits no next token"
                    elif lib.llama_vocab_is_eog(self.vocab, token):
                        job.finish = "stop"
                    elif not job.sampler.accept(token):
                        job.finish, job.error = "length", "ValueError: the grammar rejects the sampled token"
                    else:
                        job.output.append(token)
                        if len(job.output) >= job.max_tokens:
                            job.finish = "length"
                    if job.finish is not None:
                        job.sampler.close()
                        slots[slot] = None
        except BaseException:
            for slot in range(self.n_seq):  # an interrupted call leaves no half-known cache behind
                self._truncate(slot, 0)
            raise
        finally:
            for job in jobs:
                job.sampler.close()

    def close(self) -> None:
        if getattr(self, "batch", None) is not None:
            self._lib.llama_batch_free(self.batch)
            self.batch = None
        if getattr(self, "ctx", None):
            self._lib.llama_free(self.ctx)
            self.ctx = None
