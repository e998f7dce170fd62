"""The one tag reader (``ivr.data.prompts.extract_tag``) keeps every former ``<desc>`` extractor's
behaviour at its call site.

There were three: rl/rectify.py (``<desc>(.*?)</desc>``: first CLOSED block, stripped, "" when
absent; its ``description_agrees`` read the same regex unstripped), rl/self_reward.py (imported
rectify's), data/synth.py (``<desc>(.*?)(?:</desc>|$)``: first block, an unclosed one runs to the
end, stripped, None when absent). Expected values below are read off those regexes by hand.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.data.prompts import extract_description, extract_tag
from ivr.rl.rectify import description_agrees, scene_text
from ivr.types import Sample

# (response, strict: rectify/self-reward, lenient: the world's description metrics)
CASES = [
    ("<desc> a red circle </desc> <think>t</think> \\boxed{1}", "a red circle", "a red circle"),
    ("<desc>a</desc> <desc>b</desc>", "a", "a"),  # the first block, both ways
    ("<desc>cut off by the token limit", "", "cut off by the token limit"),  # unclosed
    ("<desc>cut off\n", "", "cut off"),  # `$` also matches before a final newline; stripped anyway
    ("<desc>x</desc> then <desc>unclosed", "x", "x"),
    ("<desc></desc>", "", ""),  # empty block: "" for both
    ("<desc>\n  two\nlines \n</desc>", "two\nlines", "two\nlines"),  # inner newlines kept
    ("<think>no description</think> \\boxed{2}", "", None),  # absent: "" vs None
    ("", "", None),
    ("</desc> a <desc>b</desc>", "b", "b"),  # a stray close tag before the block is ignored
]


@pytest.mark.parametrize(("response", "strict", "lenient"), CASES)
def test_each_call_site_reads_what_it_read_before(response, strict, lenient) -> None:
    sample = Sample(id="s", question="q", answer="1", description="a red circle at top left")
    # rectify.scene_text (the description-context rectification) and self_reward: strict, "".
    assert scene_text(sample, response) == strict
    assert (extract_tag(response, "desc") or "") == strict
    # data.render.description_fidelity, data.grounding, data.diagnose, eval.runner: lenient, None.
    assert extract_description(response) == lenient
    assert extract_tag(response, "desc", unclosed=True) == lenient


def test_strict_reading_distinguishes_absent_from_empty() -> None:
    assert extract_tag("<desc>  </desc>", "desc") == ""
    assert extract_tag("<desc>  ", "desc") is None
    assert extract_tag("no tag", "desc") is None


def test_other_tags() -> None:
    r = "<desc>d</desc> <think> 2 + 3 = 5 </think> \\boxed{5}"
    assert extract_tag(r, "think") == "2 + 3 = 5"
    assert extract_tag(r, "answer") is None
    assert extract_tag("<answer>B</answer>", "answer") == "B"


def test_description_agrees_reads_the_first_closed_block() -> None:
    s = Sample(
        id="s", question="q", answer="1", description="a red circle at top left; a blue square"
    )
    # Order, case, spacing and a trailing period do not matter (``_objects``).
    assert description_agrees(s, "<desc>\n A blue square.\na red circle at top left </desc>")
    assert description_agrees(s, "<desc>a red circle at top left</desc>") is False
    # Unclosed: no block for the strict reader, so it does not agree.
    assert description_agrees(s, "<desc>a red circle at top left; a blue square") is False
    assert description_agrees(s, "\\boxed{1}") is False
    assert description_agrees(Sample(id="s", question="q", answer="1"), "<desc>x</desc>") is None


# The former regexes, verbatim, as the oracle for arbitrary responses.
_RECTIFY_DESC = re.compile(r"<desc>(.*?)</desc>", re.S)
_SYNTH_DESC = re.compile(r"<desc>(.*?)(?:</desc>|$)", re.S)

_PIECES = st.sampled_from(["<desc>", "</desc>", "<think>", " ", "\n", "a", "b;", ".", "\\boxed{1}"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=12).map("".join))
def test_same_as_the_former_regexes(response: str) -> None:
    m = _RECTIFY_DESC.search(response)
    assert (extract_tag(response, "desc") or "") == (m.group(1).strip() if m else "")
    assert (extract_tag(response, "desc") is None) == (m is None)
    m = _SYNTH_DESC.search(response)
    assert extract_description(response) == (m.group(1).strip() if m else None)
