"""Binarising rated completions into preference pairs (Tülu 3 §5.2.1), and the run's report.

Per prompt: chosen = a completion with the highest mean rating (ties among the best broken at random), rejected = a
random completion with a strictly lower mean rating; a prompt whose rated completions all tie, or that has fewer than
two, gives no pair (counted). Pure functions: the randomness is a ``random.Random`` seeded per prompt id, so a
resumed or re-sharded run writes the same pairs.
"""

from __future__ import annotations

import random
from collections import Counter

DROP_REASONS = ("fewer_than_2_rated", "all_tied")
"""Why a prompt gave no pair."""


def prompt_rng(seed: int, prompt_id: str) -> random.Random:
    """The choice of chosen/rejected for one prompt: independent of shards, workers and order."""
    return random.Random(f"prefgen-{seed}-{prompt_id}")


def binarize(rated: list[dict], rng: random.Random) -> tuple[tuple[dict, dict] | None, str]:
    """``((chosen, rejected), "pair")`` or ``(None, reason)`` from one prompt's rated completions.

    Args:
        rated: completions with a mean rating, each ``{"model", "text", "rating", ...}`` (unrated ones left out).
        rng: the prompt's :func:`prompt_rng`.
    """
    if len(rated) < 2:
        return None, "fewer_than_2_rated"
    best = max(r["rating"] for r in rated)
    top = [r for r in rated if r["rating"] == best]
    lower = [r for r in rated if r["rating"] < best]
    if not lower:
        return None, "all_tied"
    return (rng.choice(top), rng.choice(lower)), "pair"


def last_user_text(messages: list[dict]) -> str:
    """The released schema's ``prompt`` column: the last user turn's text."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def preference_row(prompt: dict, chosen: dict, rejected: dict) -> dict:
    """A pair in the released Tülu 3 preference schema (allenai/llama-3.1-tulu-3-8b-preference-mixture): ``id``,
    ``source``, ``prompt``, ``chosen`` / ``rejected`` message lists (the prompt turns, then the answer), the two mean
    ratings and the two model names."""
    msgs = prompt["messages"]
    return {
        "id": prompt["id"],
        "source": prompt["source"],
        "prompt": last_user_text(msgs),
        "chosen": msgs + [{"role": "assistant", "content": chosen["text"]}],
        "rejected": msgs + [{"role": "assistant", "content": rejected["text"]}],
        "chosen_rating": chosen["rating"],
        "rejected_rating": rejected["rating"],
        "chosen_model": chosen["model"],
        "rejected_model": rejected["model"],
    }


def rating_histogram(ratings: list[float]) -> dict[str, int]:
    """Counts of mean ratings rounded to the nearest 0.5 (``"1.0"`` ... ``"5.0"``)."""
    c = Counter(f"{round(r * 2) / 2:.1f}" for r in ratings)
    return {f"{k / 2:.1f}": c.get(f"{k / 2:.1f}", 0) for k in range(2, 11)}


def merge_reports(shards: list[dict]) -> dict:
    """One report from the shard reports (``counts`` summed per key, ``models`` counts summed and ratings pooled)."""
    counts: Counter = Counter()
    models: dict[str, dict] = {}
    for s in shards:
        counts.update(s["counts"])
        for name, m in s["models"].items():
            agg = models.setdefault(name, {"counts": Counter(), "ratings": []})
            agg["counts"].update(m["counts"])
            agg["ratings"] += m["ratings"]
    return {"counts": dict(counts),
            "models": {name: {"counts": dict(m["counts"]), "rating_histogram": rating_histogram(m["ratings"]),
                              "mean_rating": (sum(m["ratings"]) / len(m["ratings"])) if m["ratings"] else None}
                       for name, m in models.items()}}
