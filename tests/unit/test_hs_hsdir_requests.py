"""Which responsible HSDir a client asks (tor hs_common.c hs_pick_hsdir and the last-request table): never
one asked for the same descriptor within the requery period, none when all were, and the table purged as
tor purges it."""

from __future__ import annotations

import random

import pytest

from oppy.hs.hsdir_requests import (
    REND_HID_SERV_DIR_REQUERY_PERIOD,
    REND_HID_SERV_DIR_REQUERY_PERIOD_TESTING,
    HsDirRequests,
)
from oppy.netdoc.relay import RelayTarget

HSDIRS = [RelayTarget(f"hsdir{i}", bytes([i]) * 20, "127.0.0.1", 19000 + i) for i in range(6)]
DESCRIPTOR = "A" * 43
OTHER = "B" * 43
NOW = 1_700_000_000.0


def ask_all(requests: HsDirRequests, descriptor_id: str, now: float) -> list[RelayTarget]:
    asked = []
    while (hsdir := requests.pick(HSDIRS, descriptor_id, now, random.Random(len(asked)))) is not None:
        asked.append(hsdir)
    return asked


def test_the_requery_period_is_tors():
    assert HsDirRequests().requery_period == REND_HID_SERV_DIR_REQUERY_PERIOD == 15 * 60
    assert HsDirRequests(testing_network=True).requery_period == REND_HID_SERV_DIR_REQUERY_PERIOD_TESTING == 5


def test_each_responsible_hsdir_is_asked_once_then_none_is_left():
    requests = HsDirRequests()
    asked = ask_all(requests, DESCRIPTOR, NOW)
    assert sorted(asked) == sorted(HSDIRS)
    assert all(requests.last_request(hsdir, DESCRIPTOR) == NOW for hsdir in HSDIRS)
    # Another descriptor (another service, or the next time period's blinded key) has its own history.
    assert requests.pick(HSDIRS, OTHER, NOW, random.Random(0)) is not None


@pytest.mark.parametrize("testing_network", [False, True])
def test_an_hsdir_is_asked_again_only_after_the_requery_period(testing_network):
    requests = HsDirRequests(testing_network)
    period = requests.requery_period
    asked = requests.pick(HSDIRS[:1], DESCRIPTOR, NOW, random.Random(0))
    assert asked == HSDIRS[0]
    # tor: "last + hs_hsdir_requery_period(options) >= now" leaves it out.
    assert requests.pick(HSDIRS[:1], DESCRIPTOR, NOW + period, random.Random(0)) is None
    assert requests.pick(HSDIRS[:1], DESCRIPTOR, NOW + period + 1, random.Random(0)) == HSDIRS[0]
    assert requests.last_request(HSDIRS[0], DESCRIPTOR) == NOW + period + 1


def test_the_ones_asked_lately_are_skipped():
    requests = HsDirRequests()
    for hsdir in HSDIRS[:4]:
        requests.pick([hsdir], DESCRIPTOR, NOW, random.Random(0))
    assert sorted(ask_all(requests, DESCRIPTOR, NOW + 60)) == sorted(HSDIRS[4:])


def test_a_service_is_purged_alone_and_newnym_purges_everything():
    requests = HsDirRequests()
    ask_all(requests, DESCRIPTOR, NOW)
    ask_all(requests, OTHER, NOW)
    requests.purge_service(DESCRIPTOR)   # tor purge_hid_serv_request
    assert sorted(ask_all(requests, DESCRIPTOR, NOW)) == sorted(HSDIRS)
    assert requests.pick(HSDIRS, OTHER, NOW, random.Random(0)) is None
    requests.purge()                     # tor hs_purge_last_hid_serv_requests
    assert all(requests.last_request(hsdir, key) is None for hsdir in HSDIRS for key in (DESCRIPTOR, OTHER))
