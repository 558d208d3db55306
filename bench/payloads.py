"""Seeded, realistic eval-call payloads shared by every bench contender.

A profile yields the parts of one traced call (inputs, output, summary, attributes) for
item index ``i``. The same ``(profile, i)`` always gives the same data, in any process, so
every contender sends identical payloads. Text is drawn word by word from a fixed,
Zipf-weighted vocabulary: it compresses about as well as natural prose, neither as well
as repeated slices of one string nor as badly as random bytes.

Sizes are targets for the *encoded complete call* (compact JSON of the whole wire item,
ids and timestamps included). Text budgets are derived once per profile from the measured
size of a skeleton call, so the targets hold when the skeleton changes.

Generating is cheap but not free (~0.1 µs per word): benchmarks pre-generate their items
before timing starts.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any

__all__ = ["PROFILE_NAMES", "Profile", "encoded_size_bytes", "profile"]

_VOCABULARY_SEED = 0x5EED_0001
_VOCABULARY_WORDS = 4096
_SYLLABLES = (
    "ka", "lo", "mi", "ra", "ten", "vo", "sun", "el", "tri", "dan", "po", "qu", "ser",
    "al", "nor", "is", "gre", "fa", "um", "ble", "con", "ti", "ex", "pe", "ri", "ment",
)  # fmt: skip
_MODELS = ("gpt-4o-mini-2024-07-18", "claude-3-5-haiku-20241022", "llama-3.1-8b-instruct")
# A fixed instant for the size skeleton: real runs use the clock, same length on the wire.
_SKELETON_TIME = "2026-01-01T00:00:00.000000Z"
_SKELETON_ID = "01930000-0000-7000-8000-000000000000"


_CORPUS_CHARS = 1 << 22
_MASK64 = (1 << 64) - 1


@lru_cache(maxsize=1)
def _corpus() -> str:
    """~4 MiB of Zipf-weighted words, built once per process (~0.3 s) from a fixed seed.

    Items take slices of it at seeded offsets: a few µs per item instead of drawing every
    word, and across a batch the slices rarely overlap, so compression is not inflated.
    """
    rng = random.Random(_VOCABULARY_SEED)
    words = [
        "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((1, 2, 2, 3, 3, 4))))
        for _ in range(_VOCABULARY_WORDS)
    ]
    cumulative, total = [], 0.0
    for rank in range(1, len(words) + 1):
        total += 1.0 / rank
        cumulative.append(total)
    text = " ".join(rng.choices(words, cum_weights=cumulative, k=_CORPUS_CHARS // 7))
    return text[:_CORPUS_CHARS]


def _draw(*keys: int) -> int:
    """A 64-bit value mixed from ``keys``: cheap, seeded, the same in every process.

    Tuples of ints hash the same in every process (only str/bytes hashing is salted);
    one splitmix64 finaliser round spreads that hash over all 64 bits.
    """
    z = (hash(keys) + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _text(key: int, n_chars: int) -> str:
    """``n_chars`` ASCII characters (one byte each) of corpus text starting at a word."""
    if n_chars <= 0:
        return ""
    corpus = _corpus()
    offset = key % (len(corpus) - n_chars - 64)
    start = corpus.find(" ", offset) + 1
    return corpus[start : start + n_chars]


# Part codes keep the draws of one item's parts independent of each other.
_SYSTEM, _QUESTION, _CONTEXT, _ANSWER, _TOKENS, _JITTER = range(1, 7)
_LABELS = ("positive", "negative", "neutral")


@dataclass(frozen=True)
class _Budget:
    """Characters of free text per field, for one item."""

    system: int
    question: int
    context_doc_chars: int
    answer: int


@dataclass(frozen=True)
class Profile:
    """One payload profile: the parts of traced call ``i``, deterministic in ``(seed, i)``.

    ``chat`` profiles look like an LLM call of an eval (messages, retrieved context,
    usage per model); the others like a cheap classifier op with a slim record.
    """

    name: str
    op_name: str
    approx_complete_bytes: int
    seed: int
    chat: bool
    n_models: int
    n_context_docs: int
    _shares: tuple[float, float, float, float] = field(repr=False)
    _budget: _Budget = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_budget", self._fit_budget())

    def inputs(self, i: int) -> dict[str, Any]:
        """Chat inputs (model, system + user messages, context) or a classifier's text."""
        question = self._item_text(i, _QUESTION, self._budget.question)
        if not self.chat:
            return {"text": question, "labels": list(_LABELS)}
        # The system prompt is the same for every item, as in a real eval run.
        system = _text(_draw(self.seed, _SYSTEM), self._budget.system)
        inputs: dict[str, Any] = {
            "model": _MODELS[i % len(_MODELS)],
            "messages": [{"role": "system", "content": system},
                         {"role": "user", "content": question}],
            "temperature": 0.2,
            "max_tokens": 1024,
            "example": {"id": f"ex-{i:08d}", "split": "test", "index": i},
        }  # fmt: skip
        if self.n_context_docs:
            inputs["context"] = [self._context_doc(i, k) for k in range(self.n_context_docs)]
        return inputs

    def output(self, i: int) -> Any:
        """The answer: a chat completion choice, or the classifier's label and rationale."""
        content = self._item_text(i, _ANSWER, self._budget.answer)
        if not self.chat:
            return {"label": _LABELS[i % len(_LABELS)], "rationale": content}
        return {
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "model": _MODELS[i % len(_MODELS)],
        }  # fmt: skip

    def summary(self, i: int) -> dict[str, Any]:
        """Token usage per model (the keys weave's summary carries) and status counts."""
        usage = {}
        for k in range(self.n_models):
            prompt_tokens = 50 + _draw(self.seed, _TOKENS, i, 2 * k) % 4000
            completion_tokens = 5 + _draw(self.seed, _TOKENS, i, 2 * k + 1) % 800
            entry = {
                "requests": 1,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            if self.chat:
                entry |= {
                    "input_tokens": prompt_tokens,
                    "output_tokens": completion_tokens,
                    "cache_read_input_tokens": prompt_tokens // 3,
                    "cache_creation_input_tokens": 0,
                }
            usage[_MODELS[(i + k) % len(_MODELS)]] = entry
        if not self.chat:
            return {"usage": usage}
        return {"usage": usage, "status_counts": {"success": 1, "error": 0}}

    def attributes(self, i: int) -> dict[str, Any]:
        """Client metadata as weave records it, plus the eval run this call belongs to."""
        if not self.chat:
            return {"weave": {"client_version": "0.54.0", "source": "python-sdk"}}
        return {
            "weave": {"client_version": "0.54.0", "source": "python-sdk",
                      "os_name": "Linux", "os_release": "6.8.0", "sys_version": "3.11.9"},
            "eval": {"run": f"run-{self.seed:04x}", "trial": i % 3, "row": i},
        }  # fmt: skip

    def complete_call(
        self, i: int, *, project_id: str, call_id: str, trace_id: str,
        started_at: str, ended_at: str,
    ) -> dict[str, Any]:  # fmt: skip
        """Item ``i`` as one complete call, with the keys weave's complete path sends."""
        return {
            "project_id": project_id, "id": call_id, "trace_id": trace_id,
            "op_name": self.op_name, "display_name": None, "parent_id": None,
            "thread_id": None, "turn_id": None,
            "started_at": started_at, "ended_at": ended_at,
            "attributes": self.attributes(i), "inputs": self.inputs(i),
            "output": self.output(i), "summary": self.summary(i),
            "otel_dump": None, "exception": None, "wb_user_id": None,
            "wb_run_id": None, "wb_run_step": None, "wb_run_step_end": None,
        }  # fmt: skip

    def skeleton_complete_call(self, i: int) -> dict[str, Any]:
        """``complete_call`` with fixed-width placeholder ids and times, for sizing."""
        return self.complete_call(
            i, project_id="bench-entity/bench-project", call_id=_SKELETON_ID,
            trace_id=_SKELETON_ID, started_at=_SKELETON_TIME, ended_at=_SKELETON_TIME,
        )  # fmt: skip

    def _context_doc(self, i: int, k: int) -> dict[str, Any]:
        key = _draw(self.seed, _CONTEXT, i, k)
        text = self._item_text(i, _CONTEXT + 16 * (k + 1), self._budget.context_doc_chars)
        return {"doc_id": f"doc-{key % 10**9:09d}", "score": (key >> 32) % 10_000 / 10_000,
                "text": text}  # fmt: skip

    def _item_text(self, i: int, part: int, mean_chars: int) -> str:
        """Text for one field of item ``i``; its length varies ±10% around the budget."""
        jitter = 0.9 + 0.2 * (_draw(self.seed, _JITTER, i) % 1024) / 1023
        return _text(_draw(self.seed, part, i), int(mean_chars * jitter))

    def _fit_budget(self) -> _Budget:
        """Split the bytes left after the skeleton among the text fields by ``_shares``."""
        object.__setattr__(self, "_budget", _Budget(0, 0, 0, 0))
        # With a zero budget every free-text field is empty: this measures the skeleton.
        skeleton_bytes = encoded_size_bytes(self.skeleton_complete_call(0))
        free = max(self.approx_complete_bytes - skeleton_bytes, 0)
        system, question, context, answer = (int(free * s) for s in self._shares)
        per_doc = context // self.n_context_docs if self.n_context_docs else 0
        return _Budget(system, question, per_doc, answer)


def encoded_size_bytes(obj: Any) -> int:
    """Size of ``obj`` as compact UTF-8 JSON, the way it travels on the wire."""
    return len(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode())


# Shares of free text: (system prompt, user question, retrieved context, answer).
_PROFILES: dict[str, Callable[[], Profile]] = {
    "small": lambda: Profile(
        name="small", op_name="classify", approx_complete_bytes=800, seed=11, chat=False,
        n_models=1, n_context_docs=0, _shares=(0.0, 0.6, 0.0, 0.4),
    ),
    "eval": lambda: Profile(
        name="eval", op_name="answer_question", approx_complete_bytes=4096, seed=22,
        chat=True, n_models=2, n_context_docs=2, _shares=(0.2, 0.2, 0.35, 0.25),
    ),
    "large": lambda: Profile(
        name="large", op_name="summarize_documents", approx_complete_bytes=100 * 1024,
        seed=33, chat=True, n_models=2, n_context_docs=8, _shares=(0.02, 0.03, 0.85, 0.1),
    ),
}  # fmt: skip
PROFILE_NAMES = tuple(_PROFILES)


@cache
def profile(name: str) -> Profile:
    """The named profile (``small`` ~0.8 KB, ``eval`` ~4 KB, ``large`` ~100 KB per call)."""
    try:
        return _PROFILES[name]()
    except KeyError:
        raise ValueError(
            f"unknown payload profile {name!r}; expected one of {PROFILE_NAMES}"
        ) from None
