"""OpenSet: what waits for the last connection to close hears of it once, and at once when none is open."""

from oppy.closing import OpenSet


def test_when_empty_fires_once_the_last_one_is_discarded():
    open_set: OpenSet[str] = OpenSet()
    assert open_set.when_empty().called  # nothing open: at once
    open_set.add("a")
    open_set.add("b")
    waiting = open_set.when_empty()
    open_set.discard("a")
    assert not waiting.called and "b" in open_set and len(open_set) == 1
    open_set.discard("b")
    assert waiting.called and list(open_set) == []
    open_set.discard("b")  # discarding what is gone changes nothing
