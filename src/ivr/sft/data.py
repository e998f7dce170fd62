"""SFT data: chat rows → pre-tokenised examples with assistant-only labels → padded batches.

Each row is rendered once with the processor's own chat template; the assistant spans are found
by diffing renders (``assistant_spans``), so it works for any prefix-stable template, not only
ChatML. The processor's output is kept whole: per-token fields are padded like the ids, image
features concatenated in row order (``collate``), exactly what the processor would return for the
batch. The runner's header (``ivr/sft/runner.py``) says what is trained on these and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data.images import load_image
from ..models.policy import count_image_placeholders

__all__ = [
    "IGNORE",
    "Example",
    "SFTData",
    "assistant_spans",
    "collate",
    "encode_example",
    "end_of_turn_ids",
    "resolve_sft_file",
]

IGNORE = -100
#: Tokens that can end an assistant turn in common templates (besides the tokenizer's eos).
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>")


# ---------------------------------------------------------------------------- data


def resolve_sft_file(path: str | Path) -> Path:
    """``sft.data`` as a path that exists: a chat JSONL/parquet file, or a dataset directory
    (whose ``sft.jsonl`` the loader reads)."""
    if not str(path):
        raise ValueError("sft.data is empty: set it to a chat-rows JSONL or a dataset directory")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"sft.data: {p} does not exist")
    if p.is_dir() and (p / "sft.jsonl").is_file():
        return p / "sft.jsonl"
    return p


@dataclass
class Example:
    """One pre-tokenised chat row. Tensors are 1-D over its L tokens.

    ``token_fields`` holds the processor's other per-token outputs (``mm_token_type_ids`` …);
    the image features (``pixel_values``, ``image_grid_thw`` …) live in ``SFTData.features`` under
    the key ``images`` (or are recomputed from ``text`` + the images when not cached).
    """

    id: str
    text: str  # the rendered chat (one image placeholder per image)
    input_ids: Tensor  # [L] long
    labels: Tensor  # [L] long, IGNORE outside the assistant spans
    token_fields: dict[str, Tensor] = field(default_factory=dict)  # name → [L]
    images: tuple[str, ...] = ()
    kind: str | None = None

    @property
    def n_labels(self) -> int:
        return int((self.labels != IGNORE).sum())


def _template(processor: Any, messages: Sequence[dict], generation_prompt: bool) -> str:
    return processor.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=generation_prompt
    )


def assistant_spans(processor: Any, messages: Sequence[dict]) -> tuple[str, list[tuple[str, str]]]:
    """The rendered chat and, per assistant turn, (text before the reply, text through the reply).

    Raises ``ValueError`` when the template is not prefix-stable (rendering more turns rewrites
    earlier ones, e.g. templates that strip old ``<think>`` blocks): such chats cannot be masked
    by diffing, and silently training on the wrong tokens would be worse than stopping.
    """
    full = _template(processor, messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        before = _template(processor, messages[:i], True)
        upto = _template(processor, messages[: i + 1], False)
        if not (full.startswith(upto) and upto.startswith(before)):
            raise ValueError(
                "the chat template is not prefix-stable (rendering turn "
                f"{i} changes the text before it); assistant tokens cannot be located"
            )
        spans.append((before, upto))
    return full, spans


def _image_token_id(processor: Any) -> int | None:
    tid = getattr(processor, "image_token_id", None)
    if tid is None and getattr(processor, "image_token", None):
        tid = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    return tid


def _runs(ids: list[int], token: int | None) -> list[int]:
    """Lengths of the maximal runs of ``token`` in ``ids`` (one per image for Qwen VL)."""
    if token is None:
        return []
    out, n = [], 0
    for t in ids:
        if t == token:
            n += 1
        elif n:
            out.append(n)
            n = 0
    if n:
        out.append(n)
    return out


def _expand(ids: list[int], token: int | None, runs: list[int]) -> list[int]:
    """Tokenizer ids with one placeholder per image → the processor's expanded ids."""
    if token is None:
        return ids
    out, k = [], 0
    for t in ids:
        if t == token and k < len(runs):
            out.extend([t] * runs[k])
            k += 1
        else:
            out.append(t)
    return out


def _lcp(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def end_of_turn_ids(processor: Any, extra: Sequence[int] = ()) -> set[int]:
    tok = processor.tokenizer
    vocab = tok.get_vocab()
    ids = {vocab[t] for t in _END_OF_TURN if t in vocab} | set(extra)
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return ids


def _split_fields(enc: Any) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A one-row processor output → (other per-token fields [L], image features as returned)."""
    L = enc["input_ids"].shape[1]
    token_fields, features = {}, {}
    for key, value in enc.items():
        if key in ("input_ids", "attention_mask") or not isinstance(value, Tensor):
            continue
        if value.dim() == 2 and value.shape == (1, L):
            token_fields[key] = value[0]
        else:
            features[key] = value
    return token_fields, features


def encode_example(
    processor: Any,
    messages: Sequence[dict],
    images: Sequence[Any],
    *,
    end_ids: set[int] | None = None,
    id: str = "",
) -> tuple[Example, dict[str, Tensor]]:
    """Render + tokenise one chat → (Example, image features of this row).

    The labels are the token ids on the assistant spans (reply through end-of-turn) and IGNORE
    elsewhere. Spans are found on token sequences: the processor's ids for the whole chat are
    compared with the tokenizer's ids for each prefix, image placeholders expanded to the
    processor's run lengths; the boundaries are exact when the prefix tokenises as a prefix
    (always true at ChatML special tokens), else the longest common prefix is used.
    """
    n_placeholders = count_image_placeholders(messages)
    if n_placeholders != len(images):
        raise ValueError(
            f"{n_placeholders} image placeholder(s) in the messages but {len(images)} image(s)"
        )
    text, spans = assistant_spans(processor, messages)
    enc = processor(text=[text], images=list(images) or None, return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    L = len(ids)
    img_tok = _image_token_id(processor)
    runs = _runs(ids, img_tok)
    end_ids = end_of_turn_ids(processor) if end_ids is None else end_ids
    tok = processor.tokenizer
    labels = torch.full((L,), IGNORE, dtype=torch.long)
    for before, upto in spans:
        a = _expand(tok(before)["input_ids"], img_tok, runs)
        b = _expand(tok(upto)["input_ids"], img_tok, runs)
        start = len(a) if ids[: len(a)] == a else _lcp(ids, a)
        end = len(b) if ids[: len(b)] == b else _lcp(ids, b)
        ends = [j for j in range(start, end) if ids[j] in end_ids]
        if ends:  # through the end-of-turn token, not the newline after it
            end = ends[-1] + 1
        start = max(start, 1)  # position 0 has no prediction
        if end > start:
            labels[start:end] = torch.tensor(ids[start:end])
    token_fields, features = _split_fields(enc)
    ex = Example(
        id=id,
        text=text,
        input_ids=enc["input_ids"][0].long(),
        labels=labels,
        token_fields=token_fields,
    )
    return ex, features


class SFTData:
    """Pre-tokenised rows + their image features (cached up to ``cache_mb``)."""

    def __init__(
        self,
        processor: Any,
        rows: Sequence[dict[str, Any]],
        *,
        source: str | Path = "",
        end_ids: set[int] | None = None,
        cache_mb: float = 4096,
    ) -> None:
        self.processor = processor
        self.source = str(source)
        self.examples: list[Example] = []
        self.features: dict[tuple[str, ...], dict[str, Tensor]] = {}
        budget, used = cache_mb * 2**20, 0
        end_ids = end_of_turn_ids(processor) if end_ids is None else end_ids
        for i, row in enumerate(rows):
            paths = tuple(str(p) for p in row.get("images") or ())
            where = f"{source or 'rows'}, row {i + 1} (id {row.get('id')!r})"
            images = [load_image(p, source=where) for p in paths]
            try:
                ex, feats = encode_example(
                    processor, row["messages"], images, end_ids=end_ids, id=str(row.get("id", i))
                )
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from e
            ex.images, ex.kind = paths, row.get("kind")
            self.examples.append(ex)
            if paths and paths not in self.features:
                size = sum(t.numel() * t.element_size() for t in feats.values())
                if used + size <= budget:
                    self.features[paths] = feats
                    used += size
        self.cached_mb = used / 2**20

    def __len__(self) -> int:
        return len(self.examples)

    def row_features(self, ex: Example) -> dict[str, Tensor]:
        if not ex.images:
            return {}
        feats = self.features.get(ex.images)
        if feats is None:  # beyond the cache budget: same processor call as when encoding
            images = [load_image(p) for p in ex.images]
            enc = self.processor(text=[ex.text], images=images, return_tensors="pt")
            feats = _split_fields(enc)[1]
        return feats


def collate(
    examples: Sequence[Example], features: Sequence[dict[str, Tensor]], pad_id: int
) -> dict[str, Tensor]:
    """Left-padded batch with every processor field: ids, attention mask, labels, per-token fields
    (padded with 0) and image features concatenated in row order."""
    B, L = len(examples), max(len(ex.input_ids) for ex in examples)
    batch = {
        "input_ids": torch.full((B, L), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros(B, L, dtype=torch.long),
        "labels": torch.full((B, L), IGNORE, dtype=torch.long),
    }
    token_keys = sorted({k for ex in examples for k in ex.token_fields})
    for k in token_keys:
        dtype = next(ex.token_fields[k].dtype for ex in examples if k in ex.token_fields)
        batch[k] = torch.zeros(B, L, dtype=dtype)
    for i, ex in enumerate(examples):
        n = len(ex.input_ids)
        batch["input_ids"][i, L - n :] = ex.input_ids
        batch["attention_mask"][i, L - n :] = 1
        batch["labels"][i, L - n :] = ex.labels
        for k, v in ex.token_fields.items():
            batch[k][i, L - n :] = v
    keys = sorted({k for f in features for k in f})
    for k in keys:
        batch[k] = torch.cat([f[k] for f in features if k in f], dim=0)
    return batch
