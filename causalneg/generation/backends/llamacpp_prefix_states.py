"""KV states of earlier calls kept in memory, so a prompt can start from any of them, not only the last one.

llama-cpp-python reuses the KV cache of the prompt prefix shared with the *previous* call only. The grounded
pipeline alternates prompt families within one query: decompose (system + passage + query + task), then per
span a substitute prompt (same system + passage + query, another task), a same-thing check and a judge
prompt (other texts), then the next span's substitute prompt. Each change of family threw the passage's KV
away, so every substitute prompt re-evaluated the passage. With Qwen2.5-Coder-1.5B on 2 AVX2 cores such a
request took 10.4 s on average for 16 output tokens, so most of it was prompt evaluation (the measured effect
of this module is in the llamacpp backend's docstring).

:class:`PrefixStates` keeps the sequence state (``llama_state_seq_get_data`` of sequence 0: its KV cells,
about 28 KB per token for the 1.5B in f16) of the last ``capacity`` calls, with the tokens they hold. Before a
call, :meth:`restore` loads the state sharing the longest prefix with the new prompt when that beats what the
context already holds by at least ``min_gain`` tokens; llama-cpp-python's own prefix match then drops the
cells after the shared prefix and evaluates the rest. After a call, :meth:`save` copies the state.

Outputs are the same function of the request as without it, up to floating-point differences between a
prefix evaluated in one batch and in another (as with the previous-call reuse llama-cpp-python already does).
``LlamaRAMCache`` is not used: its states carry ``n_batch x n_vocab`` float logits (311 MB for Qwen's 151k
vocabulary at ``n_batch=512``) per entry.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two 1-D token arrays."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


@dataclass(frozen=True)
class SavedState:
    """Sequence 0's KV cells as llama.cpp serialises them, and the tokens they hold (positions 0..n-1)."""

    tokens: np.ndarray
    data: bytes


@dataclass
class PrefixStats:
    """What the cache did: restores made, and the prompt tokens they spared."""

    restores: int = 0
    tokens_spared: int = 0


class PrefixStates:
    """Up to ``capacity`` saved states, least recently used evicted first; see the module docstring.

    ``capacity=0`` disables it (every method is then a no-op).
    """

    def __init__(self, capacity: int, min_gain: int = 16) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity, self.min_gain = int(capacity), int(min_gain)
        self._states: OrderedDict[bytes, SavedState] = OrderedDict()
        self.stats = PrefixStats()

    def restore(self, llm: Any, prompt: list[int]) -> int:
        """Load into ``llm`` the saved state sharing the longest prefix with ``prompt``, if worth it.

        Returns the prefix length now held (0 when nothing was loaded). A state that llama.cpp refuses to
        load leaves the context empty (``n_tokens = 0``): the call then evaluates its whole prompt.
        """
        if not self.capacity or not self._states:
            return 0
        import llama_cpp

        wanted = np.asarray(prompt, dtype=np.intc)
        held = common_prefix(np.asarray(llm._input_ids), wanted)
        key, best = max(
            ((k, common_prefix(s.tokens, wanted)) for k, s in self._states.items()), key=lambda kv: kv[1]
        )
        # keep at least one prompt token to evaluate: generation needs the logits after the prompt
        best = min(best, len(wanted) - 1)
        if best < held + self.min_gain:
            return 0
        state = self._states[key]
        self._states.move_to_end(key)
        llama_cpp.llama_memory_clear(llm._ctx.memory, False)  # metadata only: the cells are overwritten
        buffer = (ctypes.c_uint8 * len(state.data)).from_buffer_copy(state.data)
        loaded = llama_cpp.llama_state_seq_set_data(llm._ctx.ctx, buffer, len(state.data), 0)
        n = len(state.tokens)
        if loaded != len(state.data):
            llama_cpp.llama_memory_clear(llm._ctx.memory, False)
            llm.n_tokens = 0
            return 0
        llm.input_ids[:n] = state.tokens
        llm.n_tokens = n
        llm._requires_eval = True  # llama-cpp-python: restored state must decode before sampling
        self.stats.restores += 1
        self.stats.tokens_spared += best - held
        return best

    def save(self, llm: Any) -> None:
        """Copy sequence 0's state and the tokens it holds; drop saved states it extends (it covers them)."""
        if not self.capacity or llm.n_tokens == 0:
            return
        import llama_cpp

        tokens = np.array(llm._input_ids, dtype=np.intc, copy=True)
        size = int(llama_cpp.llama_state_seq_get_size(llm._ctx.ctx, 0))
        buffer = (ctypes.c_uint8 * size)()
        written = int(llama_cpp.llama_state_seq_get_data(llm._ctx.ctx, buffer, size, 0))
        if written == 0:
            return
        for key in [k for k, s in self._states.items() if common_prefix(s.tokens, tokens) == len(s.tokens)]:
            del self._states[key]
        self._states[tokens.tobytes()] = SavedState(tokens, bytes(buffer)[:written])  # a new key: the newest
        while len(self._states) > self.capacity:
            self._states.popitem(last=False)

    def clear(self) -> None:
        self._states.clear()
