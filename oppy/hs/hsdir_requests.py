"""Which responsible HSDir a client asks for a descriptor (tor ``hs_common.c`` hs_pick_hsdir and its
"last HS descriptor request" table).

tor asks one HSDir at a time and remembers, per HSDir and blinded key, when it asked: an HSDir asked for the
same descriptor within the requery period (15 minutes, 5 seconds under TestingTorNetwork) is not asked
again; when every responsible HSDir was asked lately, there is none to pick (HS_CLIENT_FETCH_NO_HSDIRS) and
the waiting streams end. The table forgets a service when a connection to it succeeded or its fetch ran
out of HSDirs (hs_client.c purge_hid_serv_request), and everything on NEWNYM
(hs_purge_last_hid_serv_requests). Sans-IO: the clock and the random choice are handed in.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

from oppy.netdoc.relay import RelayTarget

log = logging.getLogger(__name__)

__all__ = ["REND_HID_SERV_DIR_REQUERY_PERIOD", "REND_HID_SERV_DIR_REQUERY_PERIOD_TESTING", "HsDirRequests"]

#: tor hs_common.h REND_HID_SERV_DIR_REQUERY_PERIOD: an HSDir is not asked for the same descriptor again
#: within this (seconds).
REND_HID_SERV_DIR_REQUERY_PERIOD = 15 * 60
#: tor hs_common.h REND_HID_SERV_DIR_REQUERY_PERIOD_TESTING: the same under TestingTorNetwork.
REND_HID_SERV_DIR_REQUERY_PERIOD_TESTING = 5


class HsDirRequests:
    """When each HSDir was last asked for each descriptor (by its blinded key in base64, tor's
    ``req_key_str``)."""

    def __init__(self, testing_network: bool = False) -> None:
        # tor hs_hsdir_requery_period
        self.requery_period = (REND_HID_SERV_DIR_REQUERY_PERIOD_TESTING if testing_network
                               else REND_HID_SERV_DIR_REQUERY_PERIOD)
        self._last: dict[tuple[bytes, str], float] = {}

    def last_request(self, hsdir: RelayTarget, descriptor_id: str) -> float | None:
        """When `hsdir` was last asked for `descriptor_id` (None: not in the table)."""
        return self._last.get((hsdir.rsa_id, descriptor_id))

    def pick(self, responsible: Sequence[RelayTarget], descriptor_id: str, now: float,
             rng: random.Random) -> RelayTarget | None:
        """tor hs_pick_hsdir: one of the `responsible` HSDirs not asked for `descriptor_id` within the
        requery period, at random, noted as asked `now`; None when every one was asked lately."""
        self._clean(now)
        usable = [hsdir for hsdir in responsible
                  if (last := self.last_request(hsdir, descriptor_id)) is None or last + self.requery_period < now]
        if not usable:
            log.info("Could not pick one of the %d responsible hidden service directories, because we requested "
                     "them all recently without success.", len(responsible))
            return None
        chosen = rng.choice(usable)
        self._last[(chosen.rsa_id, descriptor_id)] = now
        return chosen

    def purge_service(self, descriptor_id: str) -> None:
        """tor hs_purge_hid_serv_from_last_hid_serv_requests: forget every request for `descriptor_id`."""
        self._last = {key: when for key, when in self._last.items() if key[1] != descriptor_id}

    def purge(self) -> None:
        """tor hs_purge_last_hid_serv_requests (NEWNYM): forget every request."""
        if self._last:
            log.info("Purging client last-HS-desc-request-time table")
        self._last.clear()

    def _clean(self, now: float) -> None:
        """tor hs_clean_last_hid_serv_requests: drop requests older than the requery period."""
        cutoff = now - self.requery_period
        self._last = {key: when for key, when in self._last.items() if when >= cutoff}
