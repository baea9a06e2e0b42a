"""Fuzz targets for the onion-service descriptor: mutations of the private network's C tor descriptors
(the outer document, and the decrypted layers) answer only with the module's own errors."""

from __future__ import annotations

import calendar
import json
from pathlib import Path

from hypothesis import given

from oppy.hs.address import parse_onion_address
from oppy.hs.client_auth import parse_client_auth_line
from oppy.hs.descriptor import (
    ENCRYPTED_CONSTANT,
    SUPERENCRYPTED_CONSTANT,
    decode_descriptor,
    decrypt_layer,
    parse_first_layer,
    parse_outer_descriptor,
    parse_second_layer,
)
from oppy.hs.errors import ClientAuthKeyError, ClientAuthMissing, ClientAuthWrong, InvalidDescriptor
from oppy.hs.keys import blinded_public_key, subcredential
from oppy.hs.timeperiod import TimePeriod
from tests.unit.fuzz.budget import FUZZ
from tests.unit.fuzz.strategies import seeds_mutated_or_random

DATA = Path(__file__).resolve().parents[1] / "data" / "onion_service"
CAPTURE = json.loads((DATA / "capture.json").read_text())
NOW = calendar.timegm((2026, 12, 5, 17, 50, 16))
PERIOD = TimePeriod(3742692, 8, 240)
IDENTITY = parse_onion_address(CAPTURE["plain"]["address"]).identity_key
BLINDED = blinded_public_key(IDENTITY, PERIOD)
SUBCREDENTIAL = subcredential(IDENTITY, BLINDED)
DESCRIPTOR = (DATA / "plain.desc").read_bytes()
OUTER = parse_outer_descriptor(DESCRIPTOR, NOW)
FIRST = decrypt_layer(OUTER.superencrypted, BLINDED, SUBCREDENTIAL, OUTER.revision_counter, SUPERENCRYPTED_CONSTANT)
SECOND = decrypt_layer(parse_first_layer(FIRST).encrypted, BLINDED, SUBCREDENTIAL, OUTER.revision_counter,
                       ENCRYPTED_CONSTANT)


@FUZZ
@given(seeds_mutated_or_random([DESCRIPTOR], max_random=2000))
def test_descriptor_decoding_answers_only_with_its_own_errors(data):
    try:
        decode_descriptor(data, IDENTITY, BLINDED, NOW)
    except (InvalidDescriptor, ClientAuthMissing, ClientAuthWrong):
        pass


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
        layer = parse_second_layer(data, OUTER.signing_key, NOW)
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
