"""Judging completions: the LLM judge's rubric prompt, its score format, a lenient parser, and the verifier judge.

Tülu 3 (§5.2.1) rated every completion with GPT-4o on four aspects, helpfulness, instruction following, honesty and
truthfulness, each 1-5 with the UltraFeedback rubrics (Cui et al. 2023), one request per aspect; the pair's chosen
side is the completion with the highest mean rating. Here one request rates all four aspects (the rubric below is a
condensed UltraFeedback rubric) so that a judge served by the rollout engine costs one generation per completion.

The reply format is a one-line JSON object. vLLM engines started with structured output are constrained to
:data:`SCORE_REGEX`, so a judge model, however small, emits a parseable score; replies of unconstrained engines go
through :func:`parse_ratings`, which accepts the JSON anywhere in the reply or ``aspect: N`` lines, and returns None
for anything else: such a completion is dropped and counted, never scored as 0.
"""

from __future__ import annotations

import json
import re

ASPECTS = ("helpfulness", "instruction_following", "honesty", "truthfulness")
"""The four Tülu 3 / UltraFeedback aspects, each rated 1 (worst) to 5 (best)."""
MIN_RATING, MAX_RATING = 1, 5

SCORE_REGEX = r"\{" + ", ".join(rf'"{a}": [1-5]' for a in ASPECTS) + r"\}"
"""What a structured-output judge may write: ``{"helpfulness": N, "instruction_following": N, ...}``."""

JUDGE_SYSTEM = "You are a strict and fair judge of AI assistant answers. You reply with JSON only."
RUBRIC = """Rate the assistant's answer to the conversation below on four aspects, each an integer from 1 (worst) to 5 (best).

- helpfulness: does the answer accomplish the user's task with correct, relevant and informative content?
  1 = wrong or useless; 3 = correct but incomplete or padded; 5 = correct, complete and insightful.
- instruction_following: does it follow every instruction and constraint in the conversation (task, format, length,
  style)? 1 = ignores them; 3 = follows some; 5 = follows all of them.
- honesty: is it candid about what it does not know, without overconfident or evasive claims?
  1 = confidently wrong; 3 = hedges where it should not, or not where it should; 5 = confident exactly where right.
- truthfulness: is it free of hallucinations, factual errors and contradictions of the conversation?
  1 = severe hallucination; 3 = minor errors; 5 = no hallucination.

[Conversation]
{conversation}

[Answer to rate]
{answer}

Reply with one line of JSON and nothing else:
{{"helpfulness": N, "instruction_following": N, "honesty": N, "truthfulness": N}}"""


def judge_messages(prompt_messages: list[dict], answer: str) -> list[dict]:
    """The chat sent to the judge for one completion ``answer`` of the conversation ``prompt_messages``."""
    conversation = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt_messages)
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": RUBRIC.format(conversation=conversation, answer=answer)}]


def _aspect_key(key: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(key).strip().lower())


def _rating(value) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if MIN_RATING <= v <= MAX_RATING else None


def _from_mapping(obj: dict) -> dict[str, float] | None:
    by_key = {_aspect_key(k): v for k, v in obj.items()}
    out = {a: _rating(by_key.get(a)) for a in ASPECTS}
    return None if any(v is None for v in out.values()) else out


_LINE_PATTERNS = {a: re.compile(a.replace("_", r"[\s_\-]*") + r"""["'*]*\s*(?:[:=]|is)?\s*["'*]*\s*(\d+(?:\.\d+)?)""",
                                re.IGNORECASE) for a in ASPECTS}


def parse_ratings(reply: str) -> dict[str, float] | None:
    """``{aspect: rating}`` for all four aspects from a judge reply, or None when any is missing or outside 1-5.

    Accepted: a JSON object anywhere in the reply (keys in any case, with spaces or hyphens for underscores, values
    numbers or numeric strings), else ``aspect: N`` / ``aspect = N`` / ``**Aspect**: N`` mentions (first of each).
    """
    for m in re.finditer(r"\{[^{}]*\}", reply):
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and (found := _from_mapping(obj)) is not None:
            return found
    out = {}
    for a, pat in _LINE_PATTERNS.items():
        m = pat.search(reply)
        out[a] = _rating(m.group(1)) if m else None
    return None if any(v is None for v in out.values()) else out


def mean_rating(ratings: dict[str, float]) -> float:
    return sum(ratings[a] for a in ASPECTS) / len(ASPECTS)


def verifier_ratings(scores: list[float]) -> list[dict[str, float]]:
    """The programmatic judge: a verifier score in [0, 1] (1 correct, IFEval partial credit between) becomes the same
    rating on every aspect, ``1 + 4 * score`` (correct 5, wrong 1)."""
    return [{a: MIN_RATING + (MAX_RATING - MIN_RATING) * float(s) for a in ASPECTS} for s in scores]
