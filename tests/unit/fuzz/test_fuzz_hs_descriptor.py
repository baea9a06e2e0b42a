"""Fuzz targets for the onion-service descriptor: mutations of the private network's C tor descriptor
(the outer document, and its decrypted layers) and of a client key line answer only with the module's
own errors."""

from __future__ import annotations

from hypothesis import given

from oppy.hs.client_auth import parse_client_auth_line
from oppy.hs.descriptor import decode_descriptor, parse_first_layer, parse_outer_descriptor, parse_second_layer
from oppy.hs.errors import ClientAuthKeyError, ClientAuthMissing, ClientAuthWrong, InvalidDescriptor
from tests.unit.fuzz.budget import FUZZ
from tests.unit.fuzz.strategies import seeds_mutated_or_random
from tests.unit.test_hs_descriptor import CAPTURE, NOW, _plaintexts, _service

DESCRIPTOR, IDENTITY, BLINDED = _service("plain")
FIRST, SECOND, SIGNING_KEY = _plaintexts("plain")


@FUZZ
@given(seeds_mutated_or_random([DESCRIPTOR], max_random=2000))
def test_descriptor_decoding_answers_only_with_its_own_errors(data):
    try:
        decode_descriptor(data, IDENTITY, BLINDED, NOW)
    except (InvalidDescriptor, ClientAuthMissing, ClientAuthWrong):
        pass


@FUZZ
@given(seeds_mutated_or_random([DESCRIPTOR], max_random=2000))
def test_outer_parser_answers_only_with_its_own_error(data):
    try:
        outer = parse_outer_descriptor(data, NOW)
    except InvalidDescriptor:
        return
    assert outer.signed_part in data


@FUZZ
@given(seeds_mutated_or_random([FIRST], max_random=800))
def test_first_layer_parser_answers_only_with_its_own_error(data):
    try:
        parse_first_layer(data)
    except InvalidDescriptor:
        pass


@FUZZ
@given(seeds_mutated_or_random([SECOND], max_random=2000))
def test_second_layer_parser_answers_only_with_its_own_error(data):
    try:
        layer = parse_second_layer(data, SIGNING_KEY, NOW)
    except InvalidDescriptor:
        return
    assert len(layer.introduction_points) <= 20


@FUZZ
@given(seeds_mutated_or_random([CAPTURE["auth"]["client_key_line"].encode()], max_random=120))
def test_client_auth_line_parser_answers_only_with_its_own_error(data):
    try:
        parse_client_auth_line(data.decode("latin-1"))
    except ClientAuthKeyError:
        pass
