"""The control-port codec: framing of commands, argument parsing, replies and events."""

import io

import pytest
import stem.response
import stem.socket
from hypothesis import given, settings
from hypothesis import strategies as st

from oppy.control.codec import (
    COMMAND_TOO_LONG,
    MAX_COMMAND_LENGTH,
    ControlArguments,
    ControlCommand,
    ControlLineReader,
    ControlSyntaxError,
    DataBlock,
    KeywordArgument,
    ReplyFormatError,
    bad_arguments_reply,
    decode_qstring,
    encode_data,
    encode_event,
    looks_like_http_request,
    parse_arguments,
    parse_kvline,
    quote,
    reply,
    split_positional,
    unescape_cstring,
)


def feed_all(reader, *chunks):
    results = []
    for chunk in chunks:
        results += reader.feed(chunk)
    return results


def stem_message(raw: bytes):
    """Parse bytes exactly as stem reads them from a control socket."""
    return stem.socket.recv_message(io.BytesIO(raw))


# A stream with one-line commands, bare LF, trailing spaces, a multi-line command with
# dot-stuffing and mixed line ends, and an empty line.
MIXED_STREAM = (
    b"PROTOCOLINFO 1\r\n"
    b'authenticate "pw"  \r\n'
    b"SETEVENTS \r\n"
    b"getinfo version\n"
    b"+LOADCONF some args\r\n"
    b"SocksPort 0\r\n"
    b"..starts with a dot\r\n"
    b"mid\n"
    b"...\r\n"
    b"last line\n"
    b".\r\n"
    b"\r\n"
    b"CLOSECIRCUIT 27 \r\n"
)
MIXED_EXPECTED = [
    ControlCommand("PROTOCOLINFO", "1"),
    ControlCommand("AUTHENTICATE", '"pw"'),
    ControlCommand("SETEVENTS", ""),
    ControlCommand("GETINFO", "version"),
    ControlCommand("LOADCONF", "some args", b"SocksPort 0\n.starts with a dot\nmid\n..\nlast line\n"),
    ControlCommand("", ""),
    ControlCommand("CLOSECIRCUIT", "27"),
]


class TestReader:
    def test_whole_stream(self):
        assert ControlLineReader().feed(MIXED_STREAM) == MIXED_EXPECTED

    def test_every_single_split_point(self):
        for split in range(len(MIXED_STREAM) + 1):
            reader = ControlLineReader()
            assert feed_all(reader, MIXED_STREAM[:split], MIXED_STREAM[split:]) == MIXED_EXPECTED, split
            assert reader.buffered_bytes == 0

    def test_every_pair_of_split_points_in_a_multiline_command(self):
        stream = b"+POSTDESCRIPTOR a\r\n.x\r\n..\r\nend\n.\r\nQUIT\r\n"
        expected = [ControlCommand("POSTDESCRIPTOR", "a", b"x\n.\nend\n"), ControlCommand("QUIT", "")]
        for first in range(len(stream) + 1):
            for second in range(first, len(stream) + 1):
                chunks = (stream[:first], stream[first:second], stream[second:])
                assert feed_all(ControlLineReader(), *chunks) == expected, (first, second)

    def test_byte_at_a_time(self):
        reader = ControlLineReader()
        results = feed_all(reader, *(MIXED_STREAM[i : i + 1] for i in range(len(MIXED_STREAM))))
        assert results == MIXED_EXPECTED

    def test_incomplete_line_waits(self):
        reader = ControlLineReader()
        assert reader.feed(b"GETINFO vers") == []
        assert reader.buffered_bytes == len(b"GETINFO vers")
        assert reader.feed(b"ion\r") == []
        assert reader.feed(b"\n") == [ControlCommand("GETINFO", "version")]

    def test_multiline_waits_for_the_dot_line(self):
        reader = ControlLineReader()
        assert reader.feed(b"+LOADCONF\r\nline\r\n") == []
        assert reader.feed(b". \r\n") == []  # only "." alone ends the data
        assert reader.feed(b".\r\n") == [ControlCommand("LOADCONF", "", b"line\n \n")]

    def test_bare_lf_dot_line_ends_data_too(self):
        assert ControlLineReader().feed(b"+HSPOST\nline\n.\n") == [ControlCommand("HSPOST", "", b"line\n")]

    def test_keyword_is_upper_cased_ascii_only_and_split_at_any_whitespace(self):
        assert ControlLineReader().feed(b"gEtInFo\tversion\r\n") == [ControlCommand("GETINFO", "version")]
        (command,) = ControlLineReader().feed("getinfö x\r\n".encode())
        assert command.keyword == "GETINFö"

    def test_arguments_keep_inner_spacing_and_lose_outer(self):
        (command,) = ControlLineReader().feed(b"SETCONF   a=1  b=\"x  y\" \t \r\n")
        assert command == ControlCommand("SETCONF", 'a=1  b="x  y"')

    def test_one_line_and_multiline_are_distinguished(self):
        one, multi = ControlLineReader().feed(b"QUIT\r\n+QUIT\r\n.\r\n")
        assert one.data is None and not one.is_multiline
        assert multi == ControlCommand("QUIT", "", b"") and multi.is_multiline

    def test_non_utf8_bytes_survive(self):
        raw = b'AUTHENTICATE "\xff\xfe caf\xc3\xa9"\r\n'
        (command,) = ControlLineReader().feed(raw)
        assert command.args.encode("utf-8", "surrogateescape") == raw[len(b"AUTHENTICATE ") : -2]

    def test_overlong_line_fails_without_newline(self):
        reader = ControlLineReader(max_command_length=64)
        assert reader.feed(b"GETINFO " + b"x" * 50) == []
        assert reader.feed(b"y" * 10) == [COMMAND_TOO_LONG]
        assert reader.failed and reader.buffered_bytes == 0
        assert reader.feed(b"\r\nGETINFO version\r\n") == []

    def test_commands_before_the_overlong_one_still_come_out(self):
        reader = ControlLineReader(max_command_length=32)
        results = reader.feed(b"QUIT\r\n" + b"A" * 40 + b"\r\nGETINFO version\r\n")
        assert results == [ControlCommand("QUIT", ""), COMMAND_TOO_LONG]

    def test_limit_is_inclusive(self):
        line = b"GETINFO " + b"v" * 22 + b"\r\n"
        assert len(line) == 32
        assert ControlLineReader(max_command_length=32).feed(line) == [ControlCommand("GETINFO", "v" * 22)]
        assert ControlLineReader(max_command_length=31).feed(line) == [COMMAND_TOO_LONG]

    def test_multiline_command_counts_all_its_lines(self):
        reader = ControlLineReader(max_command_length=40)
        assert reader.feed(b"+LOADCONF\r\n" + b"a" * 10 + b"\r\n") == []
        assert reader.buffered_bytes == 23
        assert reader.feed(b"b" * 10 + b"\r\n") == []
        assert reader.feed(b"c" * 10 + b"\r\n") == [COMMAND_TOO_LONG]
        assert reader.buffered_bytes == 0

    def test_default_limit_is_tors_one_mebibyte(self):
        assert MAX_COMMAND_LENGTH == 1024 * 1024
        reader = ControlLineReader()
        assert reader.feed(b"GETINFO " + b"x" * (MAX_COMMAND_LENGTH - 8)) == []
        assert reader.feed(b"x") == [COMMAND_TOO_LONG]

    def test_failure_reply_is_tors(self):
        assert COMMAND_TOO_LONG.reply == b"500 Line too long.\r\n"

    def test_http_detection(self):
        assert looks_like_http_request(b"GET / HTTP/1.1\r\n")
        assert looks_like_http_request(b"CONNECT example.com:443 HTTP/1.1\r\n")
        assert not looks_like_http_request(b"GETINFO version\r\n")


line_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=30
)


class TestDataRoundTrip:
    @settings(max_examples=200, deadline=None)
    @given(st.lists(line_text, max_size=8))
    def test_encode_data_then_read(self, lines):
        data = "".join(line + "\n" for line in lines).encode()
        stream = b"+LOADCONF\r\n" + encode_data(data)
        assert ControlLineReader().feed(stream) == [ControlCommand("LOADCONF", "", data)]

    def test_dot_stuffing(self):
        assert encode_data(".\n..x\nplain\n") == b"..\r\n...x\r\nplain\r\n.\r\n"

    def test_lf_becomes_crlf_and_crlf_stays(self):
        assert encode_data(b"a\nb\r\nc") == b"a\r\nb\r\nc\r\n.\r\n"

    def test_empty(self):
        assert encode_data(b"") == b".\r\n"

    def test_stem_reads_data_block(self):
        raw = reply(250, [DataBlock("config-text=", ".hidden\nSocksPort 9050\n"), "OK"])
        assert raw == b"250+config-text=\r\n..hidden\r\nSocksPort 9050\r\n.\r\n250 OK\r\n"
        message = stem_message(raw)
        stem.response.convert("GETINFO", message)
        assert message.entries == {"config-text": b".hidden\nSocksPort 9050"}


class TestReplies:
    def test_mid_and_final_lines(self):
        assert reply(250, ["version=0.4.9.11", "OK"]) == b"250-version=0.4.9.11\r\n250 OK\r\n"
        assert reply(552, ['Unrecognized key "x"']) == b'552 Unrecognized key "x"\r\n'

    def test_refuses_to_break_framing(self):
        with pytest.raises(ReplyFormatError):
            reply(250, ["a\r\n250 OK"])
        with pytest.raises(ReplyFormatError):
            reply(250, [DataBlock("k=\n", "x")])

    def test_needs_a_final_text_line_and_a_three_digit_code(self):
        with pytest.raises(ReplyFormatError):
            reply(250, [])
        with pytest.raises(ReplyFormatError):
            reply(250, [DataBlock("k=", "x")])
        with pytest.raises(ReplyFormatError):
            reply(25, ["OK"])

    def test_stem_parses_getinfo_reply(self):
        raw = reply(250, ["version=0.4.9.11", DataBlock("circuit-status=", "1 BUILT PURPOSE=GENERAL\n"), "OK"])
        message = stem_message(raw)
        stem.response.convert("GETINFO", message)
        assert message.entries == {"version": b"0.4.9.11", "circuit-status": b"1 BUILT PURPOSE=GENERAL"}

    def test_events(self):
        assert encode_event("BW 1 2") == b"650 BW 1 2\r\n"
        assert encode_event("CONF_CHANGED", "A=1") == b"650-CONF_CHANGED\r\n650-A=1\r\n650 OK\r\n"
        assert encode_event(DataBlock("NEWCONSENSUS", "r x\n.y\n")) == (
            b"650+NEWCONSENSUS\r\nr x\r\n..y\r\n.\r\n650 OK\r\n"
        )
        with pytest.raises(ReplyFormatError):
            encode_event()

    def test_stem_reads_events(self):
        message = stem_message(encode_event("BW 228 684"))
        stem.response.convert("EVENT", message)
        assert (message.type, message.read, message.written) == ("BW", 228, 684)

    def test_bad_arguments_reply(self):
        error = ControlSyntaxError("Need at least 1 argument(s)")
        assert bad_arguments_reply("AUTHCHALLENGE", error) == (
            b"512 Bad arguments to AUTHCHALLENGE: Need at least 1 argument(s)\r\n"
        )
        assert ControlSyntaxError("x", code=513).code == 513


class TestQuoting:
    @pytest.mark.parametrize(
        ("value", "quoted"),
        [
            ("plain", '"plain"'),
            ('a"b\\c', '"a\\"b\\\\c"'),
            ("it's", '"it\\\'s"'),
            ("\n\t\r", '"\\n\\t\\r"'),
            ("\x01\x7f", '"\\001\\177"'),
            ("é", '"\\303\\251"'),
            ("", '""'),
        ],
    )
    def test_quote_like_esc_for_log(self, value, quoted):
        assert quote(value) == quoted

    @settings(max_examples=200, deadline=None)
    @given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")))
    def test_quote_round_trips_through_unescape(self, value):
        quoted = quote(value)
        assert unescape_cstring(quoted) == (value, len(quoted))

    def test_unescape_cstring_escapes(self):
        assert unescape_cstring(r'"\x41\X42\101\0\n\t\r\"\\\'" rest') == ("ABA\0\n\t\r\"\\'", 28)
        assert unescape_cstring('k="v" x', 2) == ("v", 5)
        assert unescape_cstring(r'"\1234"') == ("S4", 7)  # at most three octal digits

    @pytest.mark.parametrize(
        "bad", ['"unterminated', r'"\777"', r'"\?"', r'"\xZZ"', r'"\x4"', '"a\nb"', 'no quote', '"\\', '"a\0"']
    )
    def test_unescape_cstring_rejects(self, bad):
        with pytest.raises(ControlSyntaxError):
            unescape_cstring(bad)

    def test_qstring(self):
        assert decode_qstring(r'"a\"b\\c\nd"') == ('a"b\\cnd', 12)
        for bad in ('"abc', '"abc\\', "abc"):
            with pytest.raises(ControlSyntaxError):
                decode_qstring(bad)


class TestArguments:
    def test_split_positional(self):
        assert split_positional("  a  b\tc  ") == ["a", "b\tc"]
        assert split_positional("") == []
        assert split_positional("a b c d", max_pieces=2) == ["a", "b c d"]
        assert split_positional("a   b c ", max_pieces=2) == ["a", "b c"]

    def test_kvline(self):
        assert parse_kvline('a=1 b="x y" c=', quoting="cstring") == [
            KeywordArgument("a", "1", False),
            KeywordArgument("b", "x y", True),
            KeywordArgument("c", "", False),
        ]

    def test_kvline_flags_and_bare_values(self):
        assert parse_kvline("IfUnused HOP=2", valueless=True) == [
            KeywordArgument("IfUnused", None),
            KeywordArgument("HOP", "2"),
        ]
        quoted = parse_kvline('"pass word"', keyless=True, quoting="qstring")
        assert quoted == [KeywordArgument(None, "pass word", True)]
        assert parse_kvline("abcd", keyless=True) == [KeywordArgument(None, "abcd")]

    @pytest.mark.parametrize(
        ("text", "options"),
        [
            ("flag", {}),
            ("=v", {}),
            ('k="v"', {"quoting": None}),
            ('k="unterminated', {}),
            ('k="\\0"', {}),
            ('k"x=1', {}),
            ("k=a'b", {"quoting": None}),
        ],
    )
    def test_kvline_errors_use_tors_message(self, text, options):
        with pytest.raises(ControlSyntaxError, match=r"^Cannot parse keyword argument\(s\)$"):
            parse_kvline(text, **options)

    def test_parse_arguments_like_control_cmd_parse_args(self):
        args = parse_arguments(
            "27 IfUnused", min_positional=1, max_positional=1, keywords=True, valueless=True, quoting=None
        )
        assert args == ControlArguments(("27",), (KeywordArgument("IfUnused", None),))
        assert args.has_flag("ifunused") and not args.has_flag("27")
        extend = parse_arguments("0 A,B purpose=general", max_positional=2, keywords=True)
        assert extend.positional == ("0", "A,B") and extend.get("PURPOSE") == "general"
        assert extend.get("missing", "dflt") == "dflt"
        assert parse_arguments("a b c").positional == ("a", "b", "c")

    def test_parse_arguments_errors(self):
        with pytest.raises(ControlSyntaxError, match=r"^Need at least 1 argument\(s\)$"):
            parse_arguments("", min_positional=1, max_positional=1)
        with pytest.raises(ControlSyntaxError, match=r"^Cannot accept more than 0 argument\(s\)$"):
            parse_arguments("x", max_positional=0)
        with pytest.raises(ControlSyntaxError, match='^Unrecognized keyword argument "FOO"$'):
            parse_arguments("5 6 FOO=1", max_positional=2, keywords=True, allowed_keywords=["HOP"])
        assert parse_arguments("5 6 hop=1", max_positional=2, keywords=True, allowed_keywords=["HOP"]).get("HOP") == "1"

