"""Deterministic synthetic task suite for the tiny end-to-end demo (no downloads).

Three task families the verifiers in ``megatron_tulu.rewards`` can check, kept short (a few dozen tokens) so a
~1M-parameter Llama pre-trained for minutes on 2 CPU cores learns some, not all, of them:

* ``gsm8k``: 1-2 step word problems with small numbers, chain of thought ending ``#### N``;
* ``math``: linear equations and fraction arithmetic, answer in ``\\boxed{...}``;
* ``ifeval``: short notes under one real IFEval instruction (ids and kwarg names as in Google's IFEval).

Preference pairs use realistic near-misses for the rejected side: an off-by-one arithmetic slip carried to the
final answer, or a response that violates the instruction in one small way.

Usage: ``python -m megatron_tulu.data.synthetic --out DIR [--seed 0] [--scale small|ci]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

NAMES = ["Tom", "Ana", "Sam", "Mia", "Leo", "Eva", "Ben", "Zoe", "Max", "Ivy"]
ITEMS = ["apples", "books", "coins", "cards", "shells", "pens", "stickers", "marbles", "eggs", "stamps"]
TOPICS = {
    "cats": ["Cats sleep for most of the day.", "A cat likes a warm spot in the sun.", "Cats clean their fur with care.",
             "Most cats enjoy a quiet home.", "A young cat plays with a ball of yarn.", "Cats can see well at night."],
    "rain": ["Rain helps the plants grow.", "The streets shine after the rain.", "Many people carry an umbrella.",
             "Rain falls from dark clouds.", "Kids like to jump in the puddles.", "The air smells fresh after rain."],
    "the sea": ["The sea is deep and wide.", "Waves roll onto the sand.", "Many fish live in the sea.",
                "Boats sail across the water.", "The sea looks green on a calm day.", "Salt makes the sea water heavy."],
    "bread": ["Bread is made from flour and water.", "Fresh bread smells very good.", "A baker wakes up early.",
              "Bread needs time to rise.", "Many people eat bread every day.", "Warm bread goes well with soup."],
    "gardens": ["A garden needs sun and water.", "Bees visit the flowers in a garden.", "Weeds grow fast in spring.",
                "A small garden can feed a family.", "Tomatoes grow well in the summer.", "Good soil makes plants strong."],
    "trains": ["Trains run on long steel tracks.", "A fast train can cross the country in a day.",
               "Many people ride the train to work.", "The station is busy in the morning.",
               "Old trains used steam to move.", "A train can pull many heavy cars."],
}
# Keywords never used in TOPICS, so "missing keyword" rejections are exact.
KEYWORDS = ["blue", "friend", "river", "silver", "lamp", "honey", "window", "garden party", "music", "winter"]
END_PHRASES = ["Is there anything else I can help with?", "Let me know if you have additional questions.",
               "Peace out.", "Any other questions?"]
SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass(frozen=True)
class Example:
    """One task instance: the user prompt, a correct/compliant response, a near-miss, and the verifier target."""

    dataset: str
    prompt: str
    chosen: str
    rejected: str
    ground_truth: str


# ---------------------------------------------------------------------------------------------- gsm8k-like
def _slip(rng: random.Random, value: int) -> int:
    """A plausible arithmetic slip: off by one (or two), never negative, never the right value."""
    d = rng.choice([-1, 1, 1, 2])
    wrong = value + d
    return wrong if wrong >= 0 and wrong != value else value + 1


def gen_gsm8k(rng: random.Random) -> Example:
    n, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.randrange(5)
    # Each step: (lead words, expression from the previous result, value from the previous result).
    if kind == 0:
        a, b = rng.randint(2, 20), rng.randint(2, 20)
        q = f"{n} has {a} {item}. {n} gets {b} more. How many {item} does {n} have now?"
        steps = [(f"{n} has {a} {item} and gets {b} more, so", lambda p: f"{a} + {b}", lambda p: a + b)]
    elif kind == 1:
        a = rng.randint(5, 30)
        b = rng.randint(1, a - 1)
        q = f"{n} has {a} {item}. {n} gives away {b}. How many {item} are left?"
        steps = [(f"{n} gives away {b} of {a} {item}, so", lambda p: f"{a} - {b}", lambda p: a - b)]
    elif kind == 2:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        q = f"{n} buys {a} bags with {b} {item} in each bag. How many {item} does {n} buy?"
        steps = [(f"There are {a} bags of {b} {item}, so", lambda p: f"{a} * {b}", lambda p: a * b)]
    elif kind == 3:
        a, b = rng.randint(2, 15), rng.randint(2, 15)
        c = rng.randint(1, a + b - 2)
        q = f"{n} has {a} {item}, buys {b} more, then gives away {c}. How many {item} does {n} have now?"
        steps = [(f"After buying, {n} has", lambda p: f"{a} + {b}", lambda p: a + b),
                 ("After giving some away,", lambda p: f"{p} - {c}", lambda p: p - c)]
    else:
        a, b, c = rng.randint(2, 6), rng.randint(2, 6), rng.randint(1, 9)
        q = f"{n} has {a} boxes with {b} {item} each and {c} more {item}. How many {item} does {n} have in total?"
        steps = [("The boxes hold", lambda p: f"{a} * {b}", lambda p: a * b),
                 ("Adding the rest,", lambda p: f"{p} + {c}", lambda p: p + c)]

    def solution(slip_at: int | None) -> tuple[str, int]:
        lines, prev = [], 0
        for j, (lead, expr, val) in enumerate(steps):
            v = val(prev)
            if j == slip_at:  # the slip is carried into later steps, as a real mistake would be
                v = _slip(rng, v)
            lines.append(f"{lead} {expr(prev)} = {v}.")
            prev = v
        return " ".join(lines) + f"\n#### {prev}", prev

    chosen, right = solution(None)
    rejected, wrong = solution(rng.randrange(len(steps)))
    if wrong == right:  # cannot happen with the templates above (steps are +/- constants), kept as a guard
        raise AssertionError(f"gsm8k near-miss equals the answer for {q!r}")
    return Example("gsm8k", q, chosen, rejected, str(right))


# ---------------------------------------------------------------------------------------------- MATH-like
def _frac(p: int, q: int) -> str:
    g = math.gcd(p, q)
    p, q = p // g, q // g
    return str(p) if q == 1 else f"\\frac{{{p}}}{{{q}}}"


def gen_math(rng: random.Random) -> Example:
    kind = rng.randrange(4)
    if kind == 0:
        a, x, b = rng.randint(2, 6), rng.randint(1, 9), rng.randint(1, 9)
        c = a * x + b
        q = f"Solve for $x$: ${a}x + {b} = {c}$."

        def sol(xv: int) -> str:
            return (f"Subtract {b} from both sides: ${a}x = {c - b}$. Divide by {a}: $x = {xv}$. "
                    f"The answer is $\\boxed{{{xv}}}$.")

        return Example("math", q, sol(x), sol(_slip(rng, x)), str(x))
    if kind in (1, 2):
        b, d = rng.randint(2, 6), rng.randint(2, 6)
        a, c = rng.randint(1, b - 1) if b > 1 else 1, rng.randint(1, d - 1) if d > 1 else 1
        if kind == 1:
            q = f"Compute $\\frac{{{a}}}{{{b}}} + \\frac{{{c}}}{{{d}}}$."
            num, den, expr = a * d + c * b, b * d, f"\\frac{{{a * d} + {c * b}}}{{{b * d}}}"
        else:
            q = f"Compute $\\frac{{{a}}}{{{b}}} \\cdot \\frac{{{c}}}{{{d}}}$."
            num, den, expr = a * c, b * d, f"\\frac{{{a * c}}}{{{b * d}}}"

        def sol(n: int) -> str:
            ans = _frac(n, den)
            return f"We get ${expr} = {ans}$. The answer is $\\boxed{{{ans}}}$."

        wrong = num + 1
        if _frac(wrong, den) == _frac(num, den):
            wrong = num + 2
        return Example("math", q, sol(num), sol(wrong), _frac(num, den))
    g = rng.randint(2, 5)
    p, qd = rng.randint(1, 5), rng.randint(2, 7)
    while math.gcd(p, qd) != 1 or p >= qd:
        p, qd = rng.randint(1, 5), rng.randint(2, 7)
    q = f"Simplify $\\frac{{{p * g}}}{{{qd * g}}}$."
    right = _frac(p, qd)
    wrong = _frac(p + 1, qd) if _frac(p + 1, qd) != right else _frac(p, qd + 1)
    tmpl = "Divide the top and bottom by {g}: ${ans}$. The answer is $\\boxed{{{ans}}}$."
    return Example("math", q, tmpl.format(g=g, ans=right), tmpl.format(g=g, ans=wrong), right)


# ---------------------------------------------------------------------------------------------- IFEval-like
def _sentences(rng: random.Random, topic: str, k: int) -> list[str]:
    return rng.sample(TOPICS[topic], k)


def _n_words(text: str) -> int:
    import re

    return len(re.findall(r"\w+", text))


def gen_ifeval(rng: random.Random) -> Example:
    topic = rng.choice(sorted(TOPICS))
    ask = f"Write a short note about {topic}."
    kind = rng.randrange(7)
    body = " ".join(_sentences(rng, topic, 2))
    if kind == 0:
        iid, kw = "change_case:english_lowercase", {}
        instr = "Your entire response should be in English, and in all lowercase letters."
        chosen = " ".join(_sentences(rng, topic, 3)).lower()
        rejected = chosen[0].upper() + chosen[1:]  # one capital letter is enough to fail
    elif kind == 1:
        iid, kw = "punctuation:no_comma", {}
        instr = "In your entire response, refrain from the use of any commas."
        s = _sentences(rng, topic, 2)
        chosen = " ".join(s)
        rejected = s[0][:-1] + ", and " + s[1][0].lower() + s[1][1:]
    elif kind == 2:
        iid = "length_constraints:number_words"
        short = " ".join(_sentences(rng, topic, 1))
        long = " ".join(_sentences(rng, topic, 4))
        ns, nl = _n_words(short), _n_words(long)
        if rng.random() < 0.5:
            kw = {"relation": "less than", "num_words": ns + rng.randint(3, max(3, (nl - ns) - 1))}
            chosen, rejected = short, long
            instr = f"Answer with less than {kw['num_words']} words."
        else:
            kw = {"relation": "at least", "num_words": nl - rng.randint(0, max(0, (nl - ns) // 2))}
            chosen, rejected = long, short
            instr = f"Answer with at least {kw['num_words']} words."
    elif kind == 3:
        iid = "keywords:existence"
        k1, k2 = rng.sample(KEYWORDS, 2)
        kw = {"keywords": [k1, k2]}
        instr = f"Include keywords {k1}, {k2} in the response."
        chosen = f"{body} I think of {k1} and {k2}."
        rejected = f"{body} I think of {k1}."
    elif kind == 4:
        iid = "startend:end_checker"
        phrase = rng.choice(END_PHRASES)
        kw = {"end_phrase": phrase}
        instr = f"Finish your response with this exact phrase {phrase} No other words should follow this phrase."
        chosen = f"{body} {phrase}"
        rejected = f"{body} {phrase} Have a nice day."
    elif kind == 5:
        iid = "detectable_format:number_bullet_lists"
        nb = rng.randint(2, 4)
        kw = {"num_bullets": nb}
        instr = f"Your answer must contain exactly {nb} bullet points. Use the markdown bullet points such as: * This is a point."
        pts = _sentences(rng, topic, nb + 1)
        chosen = "\n".join(f"* {p}" for p in pts[:nb])
        rejected = "\n".join(f"* {p}" for p in (pts if rng.random() < 0.5 else pts[: nb - 1]))
    else:
        iid, kw = "detectable_format:json_format", {}
        instr = "Entire output should be wrapped in JSON format."
        chosen = json.dumps({"topic": topic, "note": body})
        rejected = chosen[:-1]  # the classic near-miss: an unclosed object
    gt = json.dumps({"instruction_id_list": [iid], "kwargs": [kw]})
    return Example("ifeval", f"{ask} {instr}", chosen, rejected, gt)


FAMILIES: dict[str, Callable[[random.Random], Example]] = {"gsm8k": gen_gsm8k, "math": gen_math, "ifeval": gen_ifeval}

SCALES = {
    # name: pretrain docs, sft, pref_train, pref_eval, rlvr_train, per-family eval
    "small": dict(pretrain=24000, sft=6000, pref_train=3000, pref_eval=300, rlvr_train=3000, eval=200),
    # ci: big enough that packed SFT (~4 conversations per 256-token row) still fills a global batch of 16.
    "ci": dict(pretrain=240, sft=96, pref_train=48, pref_eval=12, rlvr_train=48, eval=12),
}


def _unique(rng: random.Random, family: str, n: int, seen: set[str], max_tries: int = 200) -> list[Example]:
    """``n`` examples of ``family`` whose prompts are not in ``seen`` (eval prompts stay out of training)."""
    out = []
    for _ in range(n):
        for _try in range(max_tries):
            ex = FAMILIES[family](rng)
            if ex.prompt not in seen:
                break
        else:
            raise RuntimeError(f"{family}: no prompt outside the eval set after {max_tries} draws (eval set too large)")
        out.append(ex)
    return out


def _round_robin(rng: random.Random, n: int, seen: set[str]) -> list[Example]:
    fams = sorted(FAMILIES)
    per = [_unique(rng, f, (n + len(fams) - 1 - i) // len(fams), seen) for i, f in enumerate(fams)]
    mixed = [ex for group in per for ex in group]
    rng.shuffle(mixed)
    return mixed


def _user(ex: Example, rng: random.Random) -> list[dict]:
    msgs = [{"role": "user", "content": ex.prompt}]
    if rng.random() < 0.1:  # a few system turns so the system path of the template is exercised
        msgs.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
    return msgs


def _rlvr_row(ex: Example) -> dict:
    return {"messages": [{"role": "user", "content": ex.prompt}], "ground_truth": ex.ground_truth, "dataset": ex.dataset}


def _pretrain_docs(rng: random.Random, n: int, seen: set[str]) -> list[str]:
    docs = []
    for i in range(n):
        kind = i % 4
        if kind == 0:  # plain prose about the IFEval topics
            t = rng.choice(sorted(TOPICS))
            docs.append(" ".join(_sentences(rng, t, rng.randint(2, 5))))
        elif kind == 1:  # arithmetic facts
            facts = []
            for _ in range(rng.randint(3, 6)):
                a, b = rng.randint(1, 20), rng.randint(1, 20)
                op = rng.choice("+-*")
                if op == "-" and b > a:
                    a, b = b, a
                if op == "*":
                    a, b = rng.randint(1, 9), rng.randint(1, 9)
                facts.append(f"{a} {op} {b} = {eval(f'{a}{op}{b}')}.")  # noqa: S307 (digits and one operator)
            docs.append(" ".join(facts))
        else:  # worked problems in plain (non-chat) form, never an eval prompt
            ex = _unique(rng, rng.choice(sorted(FAMILIES)), 1, seen)[0]
            docs.append(f"Question: {ex.prompt}\nAnswer: {ex.chosen}")
    return docs


def _write_jsonl(path: Path, rows: list) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def chatty(ex: Example, rng: random.Random) -> str | None:
    """A chatty teacher's GSM8K-like answer: the right solution, then a closing remark with a number after the
    ``#### N`` line, so the last number is not the answer (the GSM8K checker fails it). ``None`` for the other
    families (their checkers look at a box or the instruction, not the last number)."""
    if ex.dataset != "gsm8k":
        return None
    n = rng.choice([k for k in (1, 2, 3) if str(k) != ex.ground_truth])
    remark = rng.choice(["I checked it {n} times.", "That was {n} quick problem." if n == 1 else "Solved in {n} steps.",
                         "Hope that helps, {n} more to go!"])
    return f"{ex.chosen}\n{remark.format(n=n)}"


def generate(out_dir: str | Path, seed: int = 0, scale: str = "small", vocab_size: int = 768,
             sft_chatty: float = 0.0) -> dict:
    """Write the whole suite into ``out_dir`` and return the manifest (also written as ``manifest.json``).

    ``sft_chatty``: fraction of GSM8K-like SFT demonstrations written by a chatty teacher (:func:`chatty`),
    marked ``"teacher": "chatty"``. The SFT policy then picks up the habit on part of the prompts: its reasoning
    is right but the checker fails it, a behaviour verifiable-reward RL can select against (the demo's setting;
    real SFT mixes carry such habits, which is where Tülu 3's RLVR gains come from). Preference pairs, RLVR
    prompts and eval sets do not change. Same arguments give byte-identical files (tokenizer included).
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r} (expected one of {', '.join(SCALES)})")
    if not 0.0 <= sft_chatty < 1.0:
        raise ValueError(f"sft_chatty must be in [0, 1), got {sft_chatty}")
    sizes = SCALES[scale]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, list] = {}

    # Eval first, so every training split can exclude eval prompts exactly.
    seen: set[str] = set()
    for fam in sorted(FAMILIES):
        exs = _unique(random.Random(f"{seed}-eval-{fam}"), fam, sizes["eval"], seen)
        seen.update(e.prompt for e in exs)
        files[f"eval_{fam}.jsonl"] = [_rlvr_row(e) for e in exs]
    pref_eval = _round_robin(random.Random(f"{seed}-pref_eval"), sizes["pref_eval"], seen)
    seen.update(e.prompt for e in pref_eval)

    r_sft, r_pref, r_rl = (random.Random(f"{seed}-{k}") for k in ("sft", "pref", "rlvr"))
    sft = _round_robin(r_sft, sizes["sft"], seen)
    # dataset/ground_truth ride along (ignored by the loaders) so every written answer can be re-verified.
    r_chat = random.Random(f"{seed}-sft-chatty")  # its own stream: sft_chatty=0 leaves every file as it was

    def sft_row(e: Example) -> dict:
        talk = chatty(e, r_chat) if sft_chatty > 0 and e.dataset == "gsm8k" and r_chat.random() < sft_chatty else None
        row = {"messages": _user(e, r_sft) + [{"role": "assistant", "content": talk or e.chosen}],
               "dataset": e.dataset, "ground_truth": e.ground_truth}
        return {**row, "teacher": "chatty"} if talk else row

    files["sft_train.jsonl"] = [sft_row(e) for e in sft]

    def pref_row(e: Example, r: random.Random) -> dict:
        u = _user(e, r)
        return {"chosen": u + [{"role": "assistant", "content": e.chosen}],
                "rejected": u + [{"role": "assistant", "content": e.rejected}],
                "dataset": e.dataset, "ground_truth": e.ground_truth}

    files["pref_train.jsonl"] = [pref_row(e, r_pref) for e in _round_robin(r_pref, sizes["pref_train"], seen)]
    r_pe = random.Random(f"{seed}-pref_eval-rows")
    files["pref_eval.jsonl"] = [pref_row(e, r_pe) for e in pref_eval]
    files["rlvr_train.jsonl"] = [_rlvr_row(e) for e in _round_robin(r_rl, sizes["rlvr_train"], seen)]
    files["pretrain.jsonl"] = [{"text": t} for t in _pretrain_docs(random.Random(f"{seed}-pretrain"), sizes["pretrain"], seen)]

    hashes = {name: _write_jsonl(out / name, rows) for name, rows in sorted(files.items())}

    # Tokenizer: trained on the pretraining corpus plus the chat-formatted SFT text, in file order.
    from megatron_tulu.data.chat import render_tulu
    from megatron_tulu.data.tokenizer import SYN_EOS, train_bpe_tokenizer

    corpus = [r["text"] for r in files["pretrain.jsonl"]]
    corpus += [render_tulu(r["messages"], SYN_EOS) for r in files["sft_train.jsonl"]]
    tok = train_bpe_tokenizer(corpus, out / "tokenizer", vocab_size=vocab_size)
    tok_hash = hashlib.sha256((out / "tokenizer" / "tokenizer.json").read_bytes()).hexdigest()

    from megatron_tulu.data.chat import tokenize_sft

    sft_lens = [len(tokenize_sft(r["messages"], tok, None)["input_ids"]) for r in files["sft_train.jsonl"]]
    manifest = {
        "seed": seed,
        "scale": scale,
        "sft_chatty": sft_chatty,
        "counts": {name: len(rows) for name, rows in sorted(files.items())},
        "sha256": hashes,
        "tokenizer": {"vocab_size": len(tok), "sha256_tokenizer_json": tok_hash},
        "sft_tokens": {"max": max(sft_lens), "mean": round(sum(sft_lens) / len(sft_lens), 1)},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", choices=sorted(SCALES), default="small")
    p.add_argument("--vocab-size", type=int, default=768)
    p.add_argument("--sft-chatty", type=float, default=0.0,
                   help="fraction of GSM8K-like SFT answers from a chatty teacher (a numeric remark after the answer)")
    a = p.parse_args(argv)
    m = generate(a.out, a.seed, a.scale, a.vocab_size, a.sft_chatty)
    print(json.dumps({"out": a.out, **{k: m[k] for k in ("counts", "tokenizer", "sft_tokens")}}, indent=2))


if __name__ == "__main__":
    main()
