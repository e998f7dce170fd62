"""Chat rows for SFT (``load_sft_rows``), and the text corpus of such rows (``sft_texts``).

Why a module of its own: an SFT row is a conversation to imitate, not a question to grade, so it
is normalised to ``{"images": [abs paths], "messages": [...]}`` rather than to a ``Sample``. Files,
embedded images and bad rows are handled by the readers of ``dataset.py``, with the same
``file:line`` errors and ``on_error`` policy as ``load_samples``. Accepted spellings: Hugging Face
messages (``ivr synth`` writes these), LLaMA-Factory strings with ``<image>`` placeholders,
ShareGPT ``conversations`` (docs/sft.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .dataset import (
    DatasetError,
    _check_on_error,
    _convert_records,
    _image_paths,
    _records,
    _warn_skipped,
)

__all__ = ["load_sft_rows", "sft_texts"]

_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


def _parts(content: Any) -> list[dict[str, Any]]:
    """Content as a list of ``{"type": "image"}`` / ``{"type": "text", "text": …}`` parts; a string
    with ``<image>`` placeholders (LLaMA-Factory / ShareGPT) is split at them."""
    if isinstance(content, str):
        parts: list[dict[str, Any]] = []
        for k, piece in enumerate(content.split("<image>")):
            if k:
                parts.append({"type": "image"})
            if piece.strip():
                parts.append({"type": "text", "text": piece.strip()})
        return parts
    if isinstance(content, list):
        out = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in ("image", "text"):
                raise ValueError(
                    f"content parts must be {{'type': 'image'|'text', …}}, got {part!r}"
                )
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise ValueError(f"a text part needs a 'text' string, got {part!r}")
            out.append(dict(part))
        return out
    raise ValueError(
        f"message content must be a string or a list of parts, got {type(content).__name__}"
    )


def _sft_row(row: Any, base: Path, cache_dir: Path | None, verify: bool) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValueError(f"a row must be a JSON object, got {type(row).__name__}")
    raw = row.get("messages", row.get("conversations"))
    if not isinstance(raw, list) or not raw:
        raise ValueError("no 'messages' (or ShareGPT 'conversations') list")
    messages: list[dict[str, Any]] = []
    inline_images: list[Any] = []
    for m in raw:
        if not isinstance(m, dict):
            raise ValueError(f"a message must be an object, got {m!r}")
        role = _ROLES.get(str(m.get("role", m.get("from", ""))))
        if role is None:
            raise ValueError(
                f"unknown role {m.get('role', m.get('from'))!r} (use user, assistant, system)"
            )
        content = m.get("content", m.get("value"))
        if role == "assistant" and isinstance(content, str):
            messages.append({"role": role, "content": content})  # kept verbatim: it is the target
            continue
        parts = _parts(content)
        for p in parts:
            if p["type"] == "image":
                ref = p.pop("image", None) or p.pop("path", None)
                if ref is not None:
                    inline_images.append(ref)
        if role == "assistant":
            if any(p["type"] == "image" for p in parts):
                raise ValueError("an assistant turn cannot contain images")
            messages.append({"role": role, "content": "".join(p["text"] for p in parts)})
        else:
            messages.append({"role": role, "content": parts})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise ValueError("no assistant turn with text: nothing to train on")
    img_key = next((k for k in ("images", "image") if row.get(k) is not None), None)
    images = _image_paths(row[img_key] if img_key else inline_images, base, cache_dir, verify)
    n_slots = sum(
        p["type"] == "image" for m in messages if m["role"] != "assistant" for p in m["content"]
    )
    if n_slots != len(images):
        raise ValueError(f"{n_slots} image placeholders in the messages but {len(images)} images")
    rest = {
        k: v for k, v in row.items() if k not in ("messages", "conversations", "images", "image")
    }
    return {**rest, "images": list(images), "messages": messages}


def load_sft_rows(
    path: str | Path,
    *,
    limit: int | None = None,
    on_error: str = "raise",
    image_root: str | Path | None = None,
    verify_images: bool = False,
    cache_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Chat rows for SFT from ``path`` (a .jsonl/.parquet file, or a dataset dir: its
    ``sft.jsonl``), normalised to ``{"images": [abs paths], "messages": [...], **other keys}``.

    Accepted: HF messages (content a string or a list of image/text parts), LLaMA-Factory strings
    with ``<image>`` placeholders, ShareGPT ``conversations`` (from/value). User and system content
    come back as lists of parts, assistant content as a string. Rows must have an assistant turn
    with text (else there is nothing to train on: raised early, with the line number), and as many
    image placeholders as images.
    """
    _check_on_error(on_error)
    base, records = _records(path, "sft", default_name="sft.jsonl")
    base = Path(image_root) if image_root is not None else base
    cache = Path(cache_dir) if cache_dir is not None else None
    out, skipped, total = _convert_records(
        records,
        lambda rec: _sft_row(rec.value, base, cache, verify_images),
        limit=limit,
        on_error=on_error,
    )
    _warn_skipped(path, skipped, total)
    if not out:
        why = f" (first: {skipped[0]})" if skipped else ""
        raise DatasetError(f"{path}: no usable SFT rows{why}")
    return out


def sft_texts(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Every text of some chat rows, plus the chat roles: the corpus to train a tiny model's
    tokenizer on (``build_tiny_vlm(corpus=sft_texts(load_sft_rows(dir)))``), so that the prompts,
    answers and template headers of that data are short in tokens."""
    texts = []
    for row in rows:
        for m in row["messages"]:
            c = m["content"]
            if isinstance(c, str):
                texts.append(c)
            else:
                texts.append("\n".join(p["text"] for p in c if p.get("type") == "text"))
    return texts + ["user\n", "assistant\n", "system\n"] * 100
