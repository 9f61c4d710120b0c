"""Chat formatting and tokenization for the three stages.

The Tülu 3 template (verbatim from open-instruct's ``CHAT_TEMPLATES["tulu"]``)::

    <|system|>\\n{system}\\n<|user|>\\n{user}\\n<|assistant|>\\n{assistant}{eos}\\n<|user|>\\n...<|assistant|>\\n{last}{eos}

:func:`render_tulu` is a pure-Python copy of the Jinja template (tested equal to it) so tokenizing a million rows
does not run Jinja per message. ``template="tokenizer"`` uses the tokenizer's own ``chat_template`` instead.

Masking follows open-instruct: labels are ``-100`` on every non-assistant span, which includes the
``<|assistant|>\n`` header (it belongs to the prompt that precedes the answer) and the newline after a non-final
eos; the assistant content and its eos are trained on. Each span boundary is found by tokenizing the
conversation prefix, and that prefix must be a token prefix of the full conversation; if it is not (a merge
across the boundary, a template that renders earlier turns differently) :class:`BoundaryDriftError` is raised
rather than silently training on the wrong tokens.
"""

from __future__ import annotations

from typing import Any, Sequence

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")

TULU_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}"
    "{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if not loop.last %}"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token + '\n' }}"
    "{% else %}"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}"
    "{% endif %}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}"
    "{{ '<|assistant|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
)


class DataFormatError(ValueError):
    """A row that does not fit the expected format; the message names the field."""


class BoundaryDriftError(DataFormatError):
    """Tokenizing a conversation prefix did not give a token prefix of the full conversation."""


class PromptTooLongError(DataFormatError):
    """A prompt alone is longer than the allowed maximum length."""


def validate_messages(messages: Any, field: str = "messages", require_assistant: bool = True) -> list[dict]:
    """Check a message list; returns it. Raises :class:`DataFormatError` naming ``field`` and the message index."""
    if not isinstance(messages, (list, tuple)) or len(messages) == 0:
        raise DataFormatError(f"field {field!r} must be a non-empty list of messages, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise DataFormatError(f"{field}[{i}] must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in ROLES:
            raise DataFormatError(f"{field}[{i}].role: unknown role {role!r} (expected one of {', '.join(ROLES)})")
        content = m.get("content")
        if not isinstance(content, str):
            raise DataFormatError(f"{field}[{i}].content must be a string, got {type(content).__name__}")
        if role == "assistant" and not content.strip():
            raise DataFormatError(f"{field}[{i}]: empty assistant turn")
    if require_assistant and not any(m["role"] == "assistant" for m in messages):
        raise DataFormatError(f"field {field!r} has no assistant turn to train on")
    return list(messages)


def render_tulu(messages: Sequence[dict], eos_token: str, add_generation_prompt: bool = False) -> str:
    """Pure-Python rendering identical to :data:`TULU_CHAT_TEMPLATE` (see tests)."""
    parts = []
    n = len(messages)
    for i, m in enumerate(messages):
        role, content = m["role"], m["content"]
        last = i == n - 1
        if role == "system":
            parts.append("<|system|>\n" + content + "\n")
        elif role == "user":
            parts.append("<|user|>\n" + content + "\n")
        elif role == "assistant":
            parts.append("<|assistant|>\n" + content + eos_token + ("" if last else "\n"))
        if last and add_generation_prompt:
            parts.append("<|assistant|>\n")
    return "".join(parts)


def render(messages: Sequence[dict], tokenizer, template: str = "tulu", add_generation_prompt: bool = False) -> str:
    """Render ``messages`` to text with the Tülu template (``"tulu"``) or the tokenizer's own (``"tokenizer"``)."""
    if template == "tulu":
        return render_tulu(messages, tokenizer.eos_token, add_generation_prompt)
    if template == "tokenizer":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("template='tokenizer' but the tokenizer has no chat_template")
        if len(messages) == 0:
            return ""
        return tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
    raise ValueError(f"unknown chat template {template!r} (expected 'tulu' or 'tokenizer')")


def encode_text(text: str, tokenizer, add_bos: bool = False) -> list[int]:
    """Token ids of rendered chat ``text`` (no special tokens added, as ``apply_chat_template``); with ``add_bos`` the
    tokenizer's BOS is prepended once unless the template already wrote it (``DataConfig.add_bos``)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
    bos = tokenizer.bos_token
    if add_bos and bos is not None and not text.startswith(bos):
        ids = [tokenizer.bos_token_id] + list(ids)
    return list(ids)


def _prefix_ids(messages, upto: int, tokenizer, template: str, add_bos: bool, gen_prompt: bool) -> list[int]:
    if upto == 0:
        return encode_text("", tokenizer, add_bos)
    return encode_text(render(messages[:upto], tokenizer, template, gen_prompt), tokenizer, add_bos)


def _check_prefix(full: list[int], prefix: list[int], messages, upto: int) -> None:
    if full[: len(prefix)] != prefix:
        k = next((j for j, (a, b) in enumerate(zip(full, prefix)) if a != b), min(len(full), len(prefix)))
        raise BoundaryDriftError(
            f"tokenizing the first {upto} message(s) is not a token prefix of the full conversation "
            f"(first difference at token {k}: full={full[k:k + 4]} prefix={prefix[k:k + 4]}); "
            f"the template or tokenizer merges across the turn boundary after message {upto - 1} "
            f"(role {messages[upto - 1]['role']!r})"
        )


def tokenize_sft_full(
    messages: Sequence[dict], tokenizer, template: str = "tulu", add_bos: bool = False
) -> dict[str, list[int]]:
    """Untruncated ``{"input_ids", "labels"}`` with labels only on assistant tokens; boundary-drift checked."""
    messages = validate_messages(messages)
    full = encode_text(render(messages, tokenizer, template), tokenizer, add_bos)
    labels = list(full)
    n = len(messages)
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            # Boundary after an assistant turn: later masking must not eat into it.
            if i < n - 1:
                _check_prefix(full, _prefix_ids(messages, i + 1, tokenizer, template, add_bos, False), messages, i + 1)
            continue
        start = 0 if i == 0 else len(_prefix_ids(messages, i, tokenizer, template, add_bos, False))
        next_is_assistant = i + 1 < n and messages[i + 1]["role"] == "assistant"
        end_ids = _prefix_ids(messages, i + 1, tokenizer, template, add_bos, next_is_assistant)
        _check_prefix(full, end_ids, messages, i + 1)
        for j in range(start, len(end_ids)):
            labels[j] = IGNORE_INDEX
    return {"input_ids": full, "labels": labels}


def tokenize_sft(
    messages: Sequence[dict], tokenizer, max_len: int | None, template: str = "tulu", add_bos: bool = False
) -> dict[str, list[int]]:
    """Tokenize one SFT conversation.

    Returns ``{"input_ids": list[int], "labels": list[int]}`` of equal length ``<= max_len`` (truncated on the
    right, as open-instruct does); ``labels[t] == -100`` except on assistant tokens (header, content, eos).
    Raises :class:`DataFormatError` / :class:`BoundaryDriftError` on bad rows.
    """
    out = tokenize_sft_full(messages, tokenizer, template, add_bos)
    if max_len is not None and len(out["input_ids"]) > max_len:
        out = {"input_ids": out["input_ids"][:max_len], "labels": out["labels"][:max_len]}
    return out


def _split_preference(row: dict) -> tuple[list[dict], list[dict]]:
    """Chosen/rejected full conversations from a preference row (full lists, or ``prompt`` + responses)."""
    for k in ("chosen", "rejected"):
        if k not in row:
            raise DataFormatError(f"preference row is missing field {k!r}")
    chosen, rejected = row["chosen"], row["rejected"]
    prompt = row.get("prompt")
    if prompt is not None:
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        prompt = validate_messages(prompt, "prompt", require_assistant=False)

        # A response given as text (or as assistant turns alone) follows the prompt. Message lists with a user turn are
        # whole conversations, as the released Tülu 3 preference mixtures store them (the prompt already inside, maybe
        # after a system turn or earlier turns): used as they are, never prefixed with ``prompt``.
        def conversation(side):
            if isinstance(side, str):
                return prompt + [{"role": "assistant", "content": side}]
            if isinstance(side, list) and not any(isinstance(m, dict) and m.get("role") == "user" for m in side):
                return prompt + side
            return side

        chosen, rejected = conversation(chosen), conversation(rejected)
    chosen = validate_messages(chosen, "chosen")
    rejected = validate_messages(rejected, "rejected")
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise DataFormatError("preference 'chosen' and 'rejected' must both end with an assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise DataFormatError("preference 'chosen' and 'rejected' do not share the same prompt messages")
    return chosen, rejected


def tokenize_preference(
    row: dict, tokenizer, max_len: int | None, template: str = "tulu", add_bos: bool = False
) -> dict[str, list[int]]:
    """Tokenize a preference row ``{"chosen": [msgs], "rejected": [msgs]}`` (or with a ``prompt`` field).

    Returns ``{"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"}`` (lists of int,
    labels -100 outside assistant tokens, each truncated to ``max_len``).
    """
    chosen, rejected = _split_preference(row)
    c = tokenize_sft(chosen, tokenizer, max_len, template, add_bos)
    r = tokenize_sft(rejected, tokenizer, max_len, template, add_bos)
    return {
        "chosen_input_ids": c["input_ids"],
        "chosen_labels": c["labels"],
        "rejected_input_ids": r["input_ids"],
        "rejected_labels": r["labels"],
    }


def prompt_messages(messages: Sequence[dict]) -> list[dict]:
    """The prompt part of a conversation: everything before a trailing assistant turn."""
    msgs = list(messages)
    while msgs and msgs[-1].get("role") == "assistant":
        msgs.pop()
    return msgs


def tokenize_prompt(
    row: dict, tokenizer, max_len: int | None, template: str = "tulu", add_bos: bool = False
) -> dict[str, Any]:
    """Tokenize an RLVR row ``{"messages", "ground_truth", "dataset"}`` into a generation prompt.

    Returns ``{"prompt_ids": list[int], "ground_truth": str, "dataset": str}``; the prompt ends with the
    assistant header so generation starts the answer. Raises :class:`PromptTooLongError` above ``max_len``.
    """
    if "messages" not in row:
        raise DataFormatError("RLVR row is missing field 'messages'")
    for k in ("ground_truth", "dataset"):
        if k not in row:
            raise DataFormatError(f"RLVR row is missing field {k!r}")
    msgs = validate_messages(prompt_messages(row["messages"]) or row["messages"], require_assistant=False)
    ids = encode_text(render(msgs, tokenizer, template, add_generation_prompt=True), tokenizer, add_bos)
    if max_len is not None and len(ids) > max_len:
        raise PromptTooLongError(f"prompt has {len(ids)} tokens > max_len {max_len}")
    gt = row["ground_truth"]
    if not isinstance(gt, str):  # some released sets store a list with one answer
        gt = gt[0] if isinstance(gt, list) and len(gt) == 1 else str(gt)
    return {"prompt_ids": ids, "ground_truth": gt, "dataset": str(row["dataset"])}
