"""Topic rules and the backoff policy: pure functions, tested directly."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from vsm_edge.sync import Backoff, InvalidTopicError
from vsm_edge.sync._topics import MAX_TOPIC_BYTES, topic_matches, validate_filter, validate_topic


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("vsm/m/d/+", "vsm/m/d/n1", True),
        ("vsm/m/d/+", "vsm/m/d/n1/x", False),
        ("vsm/m/d/+", "vsm/m/d", False),
        ("vsm/#", "vsm", True),  # '#' matches the parent level too
        ("vsm/#", "vsm/m/presence/n1", True),
        ("vsm/+/presence/#", "vsm/m/presence", True),
        ("#", "anything/at/all", True),
        ("+/+", "a/b", True),
        ("+", "/a", False),
        ("+/a", "/a", True),  # an empty level is a level
        ("#", "$SYS/broker/uptime", False),  # wildcards do not reach $-topics
        ("+/broker/uptime", "$SYS/broker/uptime", False),
        ("$SYS/#", "$SYS/broker/uptime", True),
        ("a/b", "a/b", True),
        ("a/b", "a/B", False),
    ],
)
def test_topic_matches_examples(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize(
    "bad", ["", "a/+", "a/#", "#", "+", "a\x00b", "x" * (MAX_TOPIC_BYTES + 1), "\ud800"]
)
def test_validate_topic_rejects(bad: str) -> None:
    with pytest.raises(InvalidTopicError):
        validate_topic(bad)


@pytest.mark.parametrize("bad", ["", "a/#/b", "a#", "a/b#", "a+/b", "a/+b", "##", "a\x00"])
def test_validate_filter_rejects(bad: str) -> None:
    with pytest.raises(InvalidTopicError):
        validate_filter(bad)


def test_invalid_topic_is_a_value_error_too() -> None:
    with pytest.raises(ValueError):
        validate_topic("a/+")


def test_validate_accepts_and_returns() -> None:
    assert validate_topic("vsm/m/d/n1") == "vsm/m/d/n1"
    assert validate_filter("vsm/+/d/#") == "vsm/+/d/#"
    assert validate_filter("x" * MAX_TOPIC_BYTES) == "x" * MAX_TOPIC_BYTES


_level = st.sampled_from(["a", "b", "", "$x", "vsm"])
_topics = st.lists(_level, min_size=1, max_size=5).map("/".join)
_filter_levels = st.lists(st.sampled_from(["a", "b", "", "$x", "vsm", "+"]), min_size=1, max_size=5)


@st.composite
def _filters(draw: st.DrawFn) -> str:
    levels = draw(_filter_levels)
    if draw(st.booleans()):
        levels = [*levels[:-1], "#"]
    return "/".join(levels)


@settings(max_examples=500)
@given(_filters(), _topics)
def test_topic_matches_agrees_with_paho(topic_filter: str, topic: str) -> None:
    # paho's matcher is an independent implementation of the same rules.
    assume(topic_filter and topic)  # empty names are invalid (tested above)
    validate_filter(topic_filter)
    validate_topic(topic)
    assert topic_matches(topic_filter, topic) == topic_matches_sub(topic_filter, topic)


# --- backoff -----------------------------------------------------------------------


def test_backoff_doubles_up_to_the_maximum() -> None:
    b = Backoff(initial=1.0, maximum=10.0, multiplier=2.0, jitter=0.0)
    assert [b.delay(n, 0.3) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_backoff_jitter_spans_the_lower_half_with_equal_jitter() -> None:
    b = Backoff(initial=4.0, maximum=4.0, jitter=0.5)
    assert b.delay(0, 0.0) == 2.0
    assert b.delay(0, 0.5) == 3.0
    assert b.delay(0, 0.999999) == pytest.approx(4.0, abs=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": 0},
        {"initial": -1},
        {"initial": float("nan")},
        {"maximum": 0.01, "initial": 1},
        {"maximum": float("inf")},
        {"multiplier": 0.5},
        {"jitter": 1.5},
        {"jitter": -0.1},
    ],
)
def test_backoff_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


def test_backoff_rejects_bad_random_and_attempt() -> None:
    with pytest.raises(ValueError):
        Backoff().delay(0, 1.0)
    with pytest.raises(ValueError):
        Backoff().delay(-1, 0.5)


@settings(max_examples=300)
@given(
    initial=st.floats(0.001, 10),
    factor=st.floats(1, 1000),
    multiplier=st.floats(1, 10),
    jitter=st.floats(0, 1),
    attempt=st.integers(0, 10**9),
    rnd=st.floats(0, 1, exclude_max=True),
)
def test_backoff_delay_is_bounded_and_never_overflows(
    initial: float, factor: float, multiplier: float, jitter: float, attempt: int, rnd: float
) -> None:
    b = Backoff(initial=initial, maximum=initial * factor, multiplier=multiplier, jitter=jitter)
    ceiling = b.ceiling(attempt)
    assert initial * (1 - 1e-9) <= ceiling <= b.maximum * (1 + 1e-9)
    delay = b.delay(attempt, rnd)
    assert ceiling * (1 - jitter) - 1e-9 <= delay <= ceiling + 1e-9
    assert b.ceiling(attempt) <= b.ceiling(attempt + 1) * (1 + 1e-9)
