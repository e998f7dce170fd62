"""load_image: full decode, RGB out, and errors that name the file (and the dataset row)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from ivr.data.images import load_image


def _png_bytes(mode: str = "RGB", size: tuple[int, int] = (32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, "red" if mode == "RGB" else 128).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_loads_any_mode_as_rgb(tmp_path, mode):
    path = tmp_path / f"img_{mode}.png"
    path.write_bytes(_png_bytes(mode))
    im = load_image(path)
    assert im.mode == "RGB"
    assert im.size == (32, 24)


def test_missing_file_names_path_and_dataset_row(tmp_path):
    missing = tmp_path / "no_such_image.png"
    with pytest.raises(FileNotFoundError, match="no_such_image.png") as info:
        load_image(missing, source="train.jsonl", line=17)
    assert "train.jsonl" in str(info.value) and "line 17" in str(info.value)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(FileNotFoundError, match="is a directory"):
        load_image(tmp_path)


def test_truncated_image_names_path(tmp_path):
    """A truncated PNG opens fine lazily; only the forced full decode catches it."""
    data = _png_bytes(size=(200, 200))
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    Image.open(path)  # lazy open does not notice: this is why load_image calls .load()
    with pytest.raises(ValueError, match="truncated.png"):
        load_image(path)


def test_not_an_image_names_path_and_source(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image")
    with pytest.raises(ValueError, match="notes.png.*data.jsonl, line 3"):
        load_image(path, source="data.jsonl", line=3)
