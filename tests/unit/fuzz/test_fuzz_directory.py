"""Fuzz targets for every directory parser that reads outside bytes.

Each feeds mutations of real documents (the private test network's consensus, microdescriptors and
certificates, and the head of a real 2024 consensus) to one parser and asserts that only the module's
own error type escapes. Mutations are those that found bugs before: flipped, inserted and deleted
bytes, lines dropped or repeated, and numbers replaced by other scripts' digits, integers beyond
int()'s 4300-digit limit, negative values and impossible dates (year 0000, February 30th).
"""

from __future__ import annotations

import functools
import re
import tempfile
import zlib
from pathlib import Path

from hypothesis import given, strategies as st
from twisted.internet import task

from oppy.circuit.circuit import CircuitState
from oppy.directory.cache import (
    CACHED_CERTS_FILE,
    CACHED_CONSENSUS_FILE,
    CACHED_MICRODESCS_FILE,
    STATE_FILE,
    CacheError,
    DirectoryCache,
    split_key_certificates,
    split_microdescriptors,
    split_router_descriptors,
)
from oppy.directory.client import DirectoryClient, DirectoryRequestError, HTTPResponseReader, decode_body
from oppy.directory.service import _load_cache
from oppy.netdoc.authorities import DirAuthority, parse_dir_authority_line, parse_fallback_dir_line
from oppy.netdoc.router import RouterDescriptorError, RouterSignatureError, parse_router_descriptor
from oppy.netdoc.builtin_dirs import AUTHORITY_LINES, FALLBACK_DIR_LINES
from oppy.netdoc.documents import (
    parse_consensus,
    parse_consensus_header,
    parse_key_certificates,
    parse_microdescriptor,
    parse_microdescriptors,
    parse_port_policy,
    parse_protocols,
)
from oppy.netdoc.errors import (
    AuthorityLineError,
    CertificateError,
    CertificateParseError,
    ConsensusParseError,
    DirectoryError,
    DocumentParseError,
    MicrodescriptorParseError,
)
from oppy.netdoc.fields import decode_base64, parse_decimal, parse_fixed_point, parse_hex_digest, parse_time
from oppy.netdoc.verify import verify_consensus, verify_key_certificate
from oppy.path.chooser import PathChooser
from tests.support.testdata import REAL_DIRECTORY
from tests.unit.dirsim import CannedSite, OneHopCache
from tests.unit.fuzz.budget import FUZZ

TESTNET = REAL_DIRECTORY / "testnet-0.4.9.11"


@functools.cache
def read(folder: str, name: str) -> bytes:
    return (REAL_DIRECTORY / folder / name).read_bytes()


@functools.cache
def aziz_head() -> bytes:
    """The 2024 consensus cut after its first 40 router entries, with its footer and signatures."""
    data = read("2024-05-17-aziz", "cached-microdesc-consensus")
    starts = [match.start() for match in re.finditer(rb"^r ", data, re.M)]
    return data[:starts[40]] + data[data.index(b"\ndirectory-footer") + 1:]


# ------------------------------------------------------------------------------------------ mutations

#: Replacements for a number: what Python's int(), isdigit() and calendar accept or choke on, beyond
#: the ASCII digits of dir-spec and HTTP.
HOSTILE_NUMBERS = [
    b"9" * 5000, b"-" + b"9" * 5000, b"0000", b"9" * 21, b"-1", b"-0", b"+1", b"00000000000000000000001",
    "\u0662\u0660\u0660".encode(), "\uff12\uff10\uff10".encode(), b"\xb2\xb3\xb9", b"1_000", b"0x10", b"",
]
#: Replacements for a word.
HOSTILE_WORDS = HOSTILE_NUMBERS + [
    b"0000-01-01 00:00:00", b"1969-12-31 23:59:59", b"2023-02-29 00:00:00", b"9999-12-31 23:59:60",
    b"1e400", b"nan", b"inf", b"\xff", b"\x00", b"====", b"AAAA", b"$", b"[::1]:99999", b"-----END",
]
#: A number field: digits not inside a base64 or hex word (keys, digests and fingerprints hold most
#: digit runs, and would drown the years, ports, bandwidths and versions).
_NUMBER_RE = re.compile(rb"(?<![A-Za-z0-9+/])[0-9]+(?![A-Za-z0-9+/=])")
_WORD_RE = re.compile(rb"[^ \n]+")


#: Bytes for flips and insertions: ASCII as often as not (a non-ASCII byte ends most parsers at once).
BYTES = st.one_of(st.integers(0x09, 0x7E), st.integers(0, 255))
#: How often each mutation is drawn: numbers most, as they found the most.
MUTATIONS = ["number"] * 4 + ["word"] * 2 + ["flip", "insert", "delete", "line"]


@st.composite
def mutated(draw, original: bytes, max_mutations: int = 3) -> bytes:
    """``original`` with a few number, word, byte and line mutations, placed uniformly (a Hypothesis-driven
    Random picks the places: plain integer draws favour the first ones, which hide every later line)."""
    data = bytearray(original)
    place = draw(st.randoms(use_true_random=False))
    for _ in range(draw(st.integers(1, max_mutations))):
        kind = draw(st.sampled_from(MUTATIONS))
        if kind in ("number", "word"):
            spans = [match.span() for match in (_NUMBER_RE if kind == "number" else _WORD_RE).finditer(data)]
            if spans:
                start, end = place.choice(spans)
                data[start:end] = draw(st.sampled_from(HOSTILE_NUMBERS if kind == "number" else HOSTILE_WORDS))
        elif kind == "flip" and data:
            data[place.randrange(len(data))] = draw(BYTES)
        elif kind == "insert":
            at = place.randrange(len(data) + 1)
            data[at:at] = bytes(draw(st.lists(BYTES, min_size=1, max_size=8)))
        elif kind == "delete" and data:
            start = place.randrange(len(data))
            data[start:start + draw(st.integers(1, 16))] = b""
        elif kind == "line":
            lines = bytes(data).split(b"\n")
            index = place.randrange(len(lines))
            action = draw(st.sampled_from(["drop", "repeat", "truncate"]))
            if action == "drop":
                del lines[index]
            elif action == "repeat":
                lines.insert(index, lines[index])
            else:
                lines[index] = lines[index][:place.randrange(len(lines[index]) + 1)]
            data = bytearray(b"\n".join(lines))
    return bytes(data)


# ------------------------------------------------------------------------------------------ HTTP answers


#: Characters a status code or Content-Length may be made of: ASCII digits, and what str.isdigit() and
#: int() also take (superscripts in latin-1, Arabic-Indic, fullwidth and Devanagari digits in UTF-8).
DIGITISH = [c.encode("latin-1") for c in "0123456789\xb2\xb3\xb9"] + [c.encode() for c in "\u0662\uff12\u0969"]


@st.composite
def http_answers(draw) -> bytes:
    """A directory answer as tor sends it (status, headers, plain or deflated body) with hostile numbers,
    then mutated: the head often, the body sometimes."""
    code = draw(st.one_of(st.sampled_from([b"200", b"304", b"404", b"503"]),
                          st.lists(st.sampled_from(DIGITISH), min_size=1, max_size=4).map(b"".join)))
    reason = draw(st.sampled_from([b" OK", b" Not found", b"", b" Directory busy"]))
    body = draw(st.sampled_from([read("testnet-0.4.9.11", "cached-certs")[:600], b"", b"r x\n" * 50]))
    headers = [b"Date: Sat, 21 Nov 2026 14:40:00 GMT", b"Content-Type: text/plain", b"X-Your-Address-Is: 127.0.0.1"]
    if draw(st.booleans()):
        body = zlib.compress(body)
        headers.append(b"Content-Encoding: deflate")
    length = draw(st.one_of(st.none(), st.just(b"%d" % len(body)), st.sampled_from(HOSTILE_NUMBERS),
                            st.lists(st.sampled_from(DIGITISH), min_size=1, max_size=6).map(b"".join)))
    if length is not None:
        headers.insert(draw(st.integers(0, len(headers))), b"Content-Length: " + length)
    line_end = draw(st.sampled_from([b"\r\n", b"\n"]))
    head = b"HTTP/1.0 " + code + reason + line_end + line_end.join(headers) + line_end * 2
    if draw(st.booleans()):
        head = draw(mutated(head))
    if draw(st.integers(0, 3)) == 0:
        body = draw(mutated(body))
    return head + body


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[start:end] for start, end in zip([0] + points, points + [len(data)])]


@FUZZ
@given(http_answers(), st.lists(st.integers(0, 1 << 16), max_size=12), st.sampled_from(["/x", "/x.z"]))
def test_fuzz_http_reader_raises_only_request_errors(answer, cuts, path):
    reader = HTTPResponseReader(max_size=2000)
    try:
        for piece in chunked(answer, cuts):
            reader.feed(piece)
        response = reader.finish(path, "fuzz")
    except DirectoryRequestError:
        return
    assert 100 <= response.status <= 599 and len(response.body) <= 2000


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([None, "deflate", "gzip", "identity", "x-zstd"]))
def test_fuzz_body_decoder_raises_only_request_errors(data, encoding):
    compressed = zlib.compress(read("testnet-0.4.9.11", "cached-certs")[:300])
    for body in (data, compressed[:len(data) % len(compressed)] + data, b"\x78" + data):
        try:
            assert len(decode_body(body, encoding, "/x.z", 1000)) <= 1000
        except DirectoryRequestError:
            pass


@FUZZ
@given(http_answers())
def test_fuzz_every_begin_dir_fetch_ends(answer):
    """Whatever a source answers, the request's Deferred fires, no timer is left, the circuit stays."""
    cache = OneHopCache(CannedSite(answer))
    clock = task.Clock()
    request = DirectoryClient(clock).fetch_over_circuit(cache.circuit, "/x.z", 2000)
    cache.pump()
    assert request.called and clock.getDelayedCalls() == []
    request.addErrback(lambda failure: failure.trap(DirectoryRequestError))
    assert cache.circuit.state is CircuitState.OPEN and cache.channel.destroyed == []


# ------------------------------------------------------------------------------------------ consensus


@FUZZ
@given(st.sampled_from(["testnet", "aziz"]).flatmap(
    lambda which: mutated(read("testnet-0.4.9.11", "cached-microdesc-consensus") if which == "testnet"
                          else aziz_head())))
def test_fuzz_consensus_parsers_raise_only_consensus_parse_error(data):
    for parser in (parse_consensus_header, parse_consensus):
        try:
            parser(data)
        except ConsensusParseError:
            pass


@functools.cache
def testnet_trust():
    header = parse_consensus_header(read("testnet-0.4.9.11", "cached-microdesc-consensus"))
    authorities = [DirAuthority(source.nickname, source.v3ident, source.v3ident, source.address,
                                source.dir_port, source.or_port) for source in header.dir_sources]
    certificates = parse_key_certificates(read("testnet-0.4.9.11", "cached-certs"))
    return authorities, certificates, (header.valid_after + header.valid_until) // 2


@FUZZ
@given(mutated(read("testnet-0.4.9.11", "cached-microdesc-consensus")))
def test_fuzz_consensus_verification_raises_only_directory_errors(data):
    authorities, certificates, now = testnet_trust()
    try:
        verify_consensus(data, certificates, authorities, now)
    except DirectoryError:
        pass


# ------------------------------------------------------------------------------------------ microdescriptors


@functools.cache
def bitnym_microdescs() -> bytes:
    """The first 40 microdescriptors of the 2017 cache: TAP keys, ``a`` lines, families, policies."""
    data = read("2017-03-10-bitnym", "cached-microdescs")
    starts = [match.start() for match in re.finditer(rb"^@last-listed", data, re.M)]
    return data[:starts[40]]


@FUZZ
@given(st.sampled_from(["testnet", "bitnym"]).flatmap(
    lambda which: mutated(read("testnet-0.4.9.11", "cached-microdescs") if which == "testnet"
                          else bitnym_microdescs())))
def test_fuzz_microdescriptors_raise_only_their_error(data):
    batch = parse_microdescriptors(data)          # never raises: a bad one is reported in `invalid`
    assert all(isinstance(reason, str) for reason in batch.invalid.values())
    for body, listed in split_microdescriptors(data):
        assert listed is None or isinstance(listed, int)
        try:
            parse_microdescriptor(body)
        except MicrodescriptorParseError:
            pass


# ------------------------------------------------------------------------------------------ key certificates


@FUZZ
@given(mutated(read("testnet-0.4.9.11", "cached-certs")))
def test_fuzz_key_certificates_raise_only_their_errors(data):
    authorities, _, now = testnet_trust()
    for text in split_key_certificates(data):
        try:
            (certificate,) = parse_key_certificates(text)
            verify_key_certificate(certificate, authorities, now)
        except (CertificateParseError, CertificateError):
            pass


# ------------------------------------------------------------------------------------------ cache


CACHE_FILES = {
    CACHED_CERTS_FILE: "cached-certs",
    CACHED_CONSENSUS_FILE: "cached-microdesc-consensus",
    CACHED_MICRODESCS_FILE: "cached-microdescs",
}
STATE = b'{"guards": {"version": 1, "guards": []}, "version": 1}\n'


@FUZZ
@given(st.sampled_from(sorted(CACHE_FILES) + [STATE_FILE]).flatmap(
    lambda name: st.tuples(st.just(name), mutated(STATE if name == STATE_FILE else read("testnet-0.4.9.11",
                                                                                       CACHE_FILES[name])))))
def test_fuzz_cache_loading_reports_problems_and_keeps_the_rest(damage):
    name, data = damage
    authorities, _, now = testnet_trust()
    with tempfile.TemporaryDirectory() as directory:
        for file_name, source in CACHE_FILES.items():
            (Path(directory) / file_name).write_bytes(read("testnet-0.4.9.11", source))
        (Path(directory) / STATE_FILE).write_bytes(STATE)
        (Path(directory) / name).write_bytes(data)
        contents = _load_cache(DirectoryCache(directory), authorities, now,
                               PathChooser(enforce_distinct_subnets=False).prepare)
        if name != STATE_FILE:
            assert contents.state is not None           # a damaged document never costs the guard state
        try:
            DirectoryCache(directory).read_state()
        except CacheError:
            pass


# ------------------------------------------------------------------------------------------ torrc lines


TORRC_LINES = [(parse_dir_authority_line, line) for line in AUTHORITY_LINES] + \
    [(parse_fallback_dir_line, line) for _, line in FALLBACK_DIR_LINES]


@FUZZ
@given(st.sampled_from(TORRC_LINES).flatmap(
    lambda entry: st.tuples(st.just(entry[0]), mutated(entry[1].encode()))))
def test_fuzz_authority_and_fallback_lines_raise_only_their_error(case):
    parser, line = case
    try:
        parser(line.decode("utf-8", "replace"))
    except AuthorityLineError:
        pass


# ------------------------------------------------------------------------------------------ fields


@FUZZ
@given(st.one_of(st.text(max_size=40), st.sampled_from(HOSTILE_WORDS).map(lambda b: b.decode("latin-1"))))
def test_fuzz_field_readers_raise_only_the_callers_error(text):
    readers = [
        lambda: parse_decimal(text, DocumentParseError, "fuzz", -(2 ** 31), 2 ** 31),
        lambda: parse_decimal(text, DocumentParseError, "fuzz", 0),
        lambda: parse_fixed_point(text, DocumentParseError, "fuzz"),
        lambda: parse_hex_digest(text, DocumentParseError, "fuzz"),
        lambda: parse_time(text),
        lambda: decode_base64(text, DocumentParseError, "fuzz"),
        lambda: parse_port_policy(text),
        lambda: parse_protocols(text),
    ]
    for reader in readers:
        try:
            reader()
        except DocumentParseError:
            pass


# ------------------------------------------------------------------------------------------ bridge descriptors


@functools.cache
def bridge_descriptor() -> bytes:
    """A server descriptor as a bridge serves its own, signed by a key made for the test."""
    from tests.unit.test_netdoc_router import identity_key, make_descriptor

    return make_descriptor(identity_key(0), "bridge0")


@FUZZ
@given(st.just(None).flatmap(lambda _: mutated(bridge_descriptor())))
def test_fuzz_router_descriptors_raise_only_their_errors(data):
    for text in [data, *split_router_descriptors(data)]:
        try:
            parse_router_descriptor(text)
        except (RouterDescriptorError, RouterSignatureError):
            pass
