"""The C reader of ISO-8601 timestamps in UTC (engine/native/_iso.c) against msgspec, which
the general path uses: where C reads a text it makes msgspec's datetime; where msgspec makes
a UTC datetime of a text C reads it too (C leaves every other text to msgspec)."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine.native import _accel

native = _accel.native
pytestmark = pytest.mark.skipif(native is None, reason="the C accelerator is not built here")


def _msgspec(text: str) -> dt.datetime | None:
    try:
        return msgspec.convert(text, dt.datetime)
    except msgspec.ValidationError:
        return None


@st.composite
def _timestamps(draw: st.DrawFn) -> str:
    """RFC 3339 text, mostly valid, in the shapes JSON-shaped data has them."""
    two = st.integers(0, 99).map(lambda n: f"{n:02d}")
    date = f"{draw(st.integers(0, 10000)):04d}-{draw(two)}-{draw(two)}"
    sep = draw(st.sampled_from(["T", "t", " ", "_"]))
    time = f"{draw(st.integers(0, 25)):02d}:{draw(st.integers(0, 61)):02d}:{draw(st.integers(0, 61)):02d}"
    fraction = draw(st.one_of(st.just(""), st.text("0123456789", min_size=0, max_size=12)
                              .map(lambda d: "." + d)))
    zone = draw(st.sampled_from(["Z", "z", "+00:00", "-00:00", "+0000", "", "+05:30", "-01:00",
                                 "+00:01", "+24:00", "Z ", "+00", "UTC"]))
    return date + sep + time + fraction + zone


@settings(max_examples=3000, deadline=None)
@given(st.one_of(_timestamps(), st.text(max_size=40)))
@example("9999-12-31T23:59:59.9999995Z")
@example("2024-02-29T23:59:59.99999951Z")
@example("2023-02-29T00:00:00Z")
@example("0001-01-01T00:00:00.0000004+00:00")
def test_c_reads_utc_text_as_msgspec_does_and_leaves_the_rest(text):
    made, wanted = native.iso_utc_datetime(text), _msgspec(text)
    if made is not None:
        assert made == wanted and made.tzinfo is dt.timezone.utc
        assert made.utcoffset() == wanted.utcoffset()
    else:  # msgspec refuses it, or it is naive or another offset
        assert wanted is None or wanted.utcoffset() != dt.timedelta(0)


def test_only_text_is_taken():
    with pytest.raises(TypeError):
        native.iso_utc_datetime(b"2026-01-02T03:04:05Z")
    assert native.iso_utc_datetime("2026-01-02T03:04:05\ud800") is None
