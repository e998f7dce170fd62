"""Load images for prompts, failing loudly and early.

PIL opens files lazily: a truncated PNG "opens" fine and only fails deep inside the processor,
mid-batch, with a message that names no file. ``load_image`` forces the full decode with
``.load()`` and turns every failure into an error that names the image path (and, when given,
the dataset file and line that referenced it), so a bad row is found in seconds, not hours.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

__all__ = ["load_image"]


def _where(source: str | Path | None, line: int | None) -> str:
    if source is None:
        return ""
    return f" (referenced from {source}" + (f", line {line})" if line is not None else ")")


def load_image(
    path: str | Path, *, source: str | Path | None = None, line: int | None = None
) -> Image.Image:
    """Decode ``path`` fully and return it as an RGB ``PIL.Image``.

    ``source``/``line`` (optional) name the dataset file and line that referenced the image; they
    only enrich the error messages. Raises ``FileNotFoundError`` for a missing file and
    ``ValueError`` for a file that is not a decodable image (truncated, corrupt, not an image).
    """
    p = Path(path)
    where = _where(source, line)
    if not p.is_file():
        what = "is a directory, not an image file" if p.is_dir() else "does not exist"
        raise FileNotFoundError(f"image {str(p)!r} {what}{where}")
    try:
        with Image.open(p) as im:
            im.load()  # force the full decode: truncation only shows up here
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        # PIL reports truncation as OSError ("image file is truncated") and bad headers as
        # UnidentifiedImageError / SyntaxError.
        raise ValueError(f"cannot decode image {str(p)!r}{where}: {e}") from e
