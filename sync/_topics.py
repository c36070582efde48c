"""MQTT topic names and filters: validation and matching (pure functions).

The rules are MQTT 3.1.1 section 4.7 / MQTT 5 section 4.7: a topic name has no
wildcards; in a filter ``+`` stands for exactly one whole level and ``#`` for
any number of trailing levels (including none), only as the last level; filters
starting with a wildcard do not match topic names starting with ``$``.
"""

from __future__ import annotations

from ._transport import InvalidTopicError

__all__ = ["MAX_TOPIC_BYTES", "topic_matches", "validate_filter", "validate_topic"]

MAX_TOPIC_BYTES = 65535  # a UTF-8 string in MQTT has a 16-bit length prefix


def _check_common(text: str, what: str) -> None:
    if not isinstance(text, str):
        raise InvalidTopicError(f"{what} must be a str, not {type(text).__name__}")
    if not text:
        raise InvalidTopicError(f"{what} must not be empty")
    if "\x00" in text:
        raise InvalidTopicError(f"{what} must not contain NUL")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:  # lone surrogates
        raise InvalidTopicError(f"{what} is not valid UTF-8: {exc}") from None
    if size > MAX_TOPIC_BYTES:
        raise InvalidTopicError(f"{what} is {size} bytes, more than {MAX_TOPIC_BYTES}")


def validate_topic(topic: str) -> str:
    """Return ``topic`` if it is a valid topic name to publish to, else raise InvalidTopicError."""
    _check_common(topic, "topic name")
    if "+" in topic or "#" in topic:
        raise InvalidTopicError(f"topic name {topic!r} must not contain wildcards")
    return topic


def validate_filter(topic_filter: str) -> str:
    """Return ``topic_filter`` if it is a valid subscription filter.

    Raises InvalidTopicError otherwise.
    """
    _check_common(topic_filter, "topic filter")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise InvalidTopicError(
                f"topic filter {topic_filter!r}: '#' must be a whole level, the last one"
            )
        if "+" in level and level != "+":
            raise InvalidTopicError(f"topic filter {topic_filter!r}: '+' must be a whole level")
    return topic_filter


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether a (valid) topic name matches a (valid) filter."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True  # matches the parent level too: "a/#" matches "a"
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)
