"""A known-truth toy task that yields every input shape from one sample, for learning tests and benchmarks.

The content rule: a response is a list of words; its true quality is the fraction of its words drawn from
``GOOD_WORDS`` (the rest come from ``BAD_WORDS``). Quality is independent of length by construction: each
response draws its length and its share of good words separately.

A simulated annotator judges with utility ``u = 6 * quality + gamma * z_len``, where ``z_len`` is the
standardized word count. ``gamma = 0`` is a clean annotator; ``gamma = 1.5`` is length-confounded (prefers
longer answers). Rankings are Plackett-Luce samples of ``u`` (Gumbel trick); pairs and A/B choices are the
two-item case (Bradley-Terry); good/bad labels are Bernoulli(sigmoid(u - 3)).

Held-out prompts never appear in training: every prompt starts with a topic word, and the train and test
splits draw topics from disjoint lists.

Example:
    >>> task = ToyTask(gamma=1.5, seed=0)
    >>> rows = task.rows("pairs_with_lengths", 100)          # length-confounded training pairs
    >>> test = ToyTask(gamma=0.0, seed=1).rows("pairs", 50, split="test")
    >>> quality("sun sky rock")                              # ground-truth score of any text
    0.6666666666666666
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

GOOD_WORDS = ("sun", "sky", "sea", "oak", "owl", "bee", "fig", "ivy", "elm", "joy", "tea", "zen")
BAD_WORDS = ("mud", "rot", "ash", "rag", "tar", "bog", "fog", "rut", "dud", "gnat", "grub", "soot")
_TOPICS = {
    "train": ("apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "chair", "train", "plant"),
    "test": ("ocean", "tower", "zebra", "violin", "mango", "bench", "comet", "maple", "robot", "candle"),
}
_FILLER = ("one", "two", "red", "big", "old", "new", "far", "low", "hot", "dry", "wet", "odd")

SHAPES = ("pairwise_ab", "pairs", "pairs_with_lengths", "binary", "pairs_sft_target", "ranked")
EXTRA_KINDS = ("sft", "prompts")


def quality(text: str) -> float:
    """Ground-truth score in [0, 1]: the fraction of whitespace-separated words that are good words."""
    words = text.split()
    return sum(w in GOOD_WORDS for w in words) / len(words) if words else 0.0


def toy_quality(prompts: list, completions: list, **kwargs) -> list[float]:
    """`quality` as a reward function in TRL's form (``func(prompts=..., completions=..., **kwargs)``): the known-truth
    score of each completion (plain text, or the last message of a chat completion). PPO's tiny config names it."""
    return [quality(c if isinstance(c, str) else c[-1]["content"]) for c in completions]


def word_count(text: str) -> int:
    return len(text.split())


@dataclass(frozen=True)
class ToyTask:
    """Generator of synthetic rows in every input shape. See the module docstring for the rule."""

    gamma: float = 0.0
    n_responses: int = 4
    min_words: int = 2
    max_words: int = 8
    seed: int = 0
    conversational: bool = False
    prompt_words: int = 3  # filler words after the topic; more makes the long shared prompts of benchmarks

    # --- the ground truth -------------------------------------------------------------------------------------
    def z_length(self, response: str) -> float:
        mid = (self.min_words + self.max_words) / 2
        span = self.max_words - self.min_words + 1
        std = math.sqrt((span**2 - 1) / 12) or 1.0  # std of a discrete uniform length
        return (word_count(response) - mid) / std

    def utility(self, response: str) -> float:
        return 6.0 * quality(response) + self.gamma * self.z_length(response)

    # --- sampling ---------------------------------------------------------------------------------------------
    def _prompt(self, rng: random.Random, split: str) -> str:
        topic = rng.choice(_TOPICS[split])
        return f"{topic}: " + " ".join(rng.choice(_FILLER) for _ in range(self.prompt_words))

    def _response(self, rng: random.Random) -> str:
        n = rng.randint(self.min_words, self.max_words)
        p_good = rng.random()
        return " ".join(rng.choice(GOOD_WORDS if rng.random() < p_good else BAD_WORDS) for _ in range(n))

    def _distinct_responses(self, rng: random.Random, k: int) -> list[str]:
        out: list[str] = []
        while len(out) < k:
            r = self._response(rng)
            if r not in out:
                out.append(r)
        return out

    def _plackett_luce_ranking(self, rng: random.Random, responses: list[str]) -> list[int]:
        """ranking[i] = rank of responses[i] (1 = best), sampled by perturbing utilities with Gumbel noise."""
        noisy = [self.utility(r) - math.log(-math.log(rng.random() or 1e-12)) for r in responses]
        order = sorted(range(len(responses)), key=lambda i: -noisy[i])
        ranking = [0] * len(responses)
        for position, i in enumerate(order):
            ranking[i] = position + 1
        return ranking

    def _wrap(self, text: str, role: str):
        return [{"role": role, "content": text}] if self.conversational else text

    def row(self, shape: str, rng: random.Random, split: str = "train") -> dict:
        prompt = self._prompt(rng, split)
        if shape == "prompts":
            return {"prompt": self._wrap(prompt, "user")}
        if shape == "sft":
            n = rng.randint(self.min_words, self.max_words)
            completion = " ".join(rng.choice(GOOD_WORDS) for _ in range(n))
            return {"prompt": self._wrap(prompt, "user"), "completion": self._wrap(completion, "assistant")}
        if shape == "binary":
            response = self._response(rng)
            p_good = 1 / (1 + math.exp(-(self.utility(response) - 3.0)))
            label = "good" if rng.random() < p_good else "bad"
            return {
                "prompt": self._wrap(prompt, "user"),
                "response": self._wrap(response, "assistant"),
                "label": label,
            }
        if shape == "ranked":
            responses = self._distinct_responses(rng, self.n_responses)
            return {
                "prompt": self._wrap(prompt, "user"),
                "responses": [self._wrap(r, "assistant") for r in responses],
                "ranking": self._plackett_luce_ranking(rng, responses),
            }
        a, b = self._distinct_responses(rng, 2)
        first_wins = self._plackett_luce_ranking(rng, [a, b])[0] == 1
        chosen, rejected = (a, b) if first_wins else (b, a)
        p, c, r = self._wrap(prompt, "user"), self._wrap(chosen, "assistant"), self._wrap(rejected, "assistant")
        if shape == "pairwise_ab":
            return {"prompt": p, "response_a": self._wrap(a, "assistant"), "response_b": self._wrap(b, "assistant"),
                    "preference": "A" if first_wins else "B"}  # fmt: skip
        if shape == "pairs":
            return {"prompt": p, "chosen": c, "rejected": r}
        if shape == "pairs_with_lengths":
            return {"prompt": p, "chosen": c, "rejected": r,
                    "chosen_length": word_count(chosen), "rejected_length": word_count(rejected)}  # fmt: skip
        if shape == "pairs_sft_target":
            return {"prompt": p, "chosen": c, "rejected": r, "sft_target": "chosen"}
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES + EXTRA_KINDS}")

    def rows(self, shape: str, n: int, split: str = "train") -> list[dict]:
        """`n` rows of `shape` (an input shape, or "sft" / "prompts"); the same arguments give the same rows."""
        if split not in _TOPICS:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        rng = random.Random(f"{self.seed}-{split}-{shape}")
        return [self.row(shape, rng, split) for _ in range(n)]

    def write_jsonl(self, shape: str, n: int, path: str | Path, split: str = "train") -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for row in self.rows(shape, n, split):
                f.write(json.dumps(row) + "\n")
        return path
