"""control-spec's CString (tor cstring.c unescape_string), shared by the torrc reader and pluggable transports."""

from __future__ import annotations

import pytest

from oppy.cstring import CStringError, unescape_cstring


def test_escapes_and_the_index_past_the_closing_quote():
    text = 'x "a\\n\\r\\t\\"\\\\\\\'\\x41\\X42\\101\\7\\0z\u00e9" rest'
    assert unescape_cstring(text, 2) == (b'a\n\r\t"\\\'ABA\x07\x00z\xc3\xa9', text.index(" rest"))


def test_surrogate_escaped_bytes_come_back_as_they_were():
    text = '"' + b"\xff".decode("utf-8", "surrogateescape") + '"'
    assert unescape_cstring(text, 0) == (b"\xff", 3)


@pytest.mark.parametrize("text", ['"open', '"new\nline"', '"nul\0"', '"\\q"', '"\\x4"', '"\\xg0"', '"\\400"',
                                  'unquoted', '"\\'])
def test_what_tor_refuses(text):
    with pytest.raises(CStringError):
        unescape_cstring(text, 0)
