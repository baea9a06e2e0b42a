"""Runs last (by name): the relays, all run with `ProtocolWarnings 1`, logged no warning while the tests ran.

Every oppy integration test before this one talked to these relays; a protocol violation by oppy (a bad
SENDME, a malformed cell, an unexpected RELAY_EARLY, ...) would show up here as a `[warn]` line.
"""

import re

from tests.support.network import TestNetwork

# The relays' own reachability self-test circuits on a 10-relay network sometimes end in "extend back to
# the previous hop" (a relay testing itself through a neighbour); tor logs it, followed by the generic
# relay-cell failure line. oppy never puts a relay twice in a path (path selection tests), so this pair is
# the network's own noise, seen with no client attached.
NETWORK_NOISE = "Client asked me to extend back to the previous hop."
NOISE_FOLLOW_UP = "connection_edge_process_relay_cell (away from origin) failed."
# A relay's own vanguard path choice on a network this small (no client is involved).
RELAY_OWN_WARNINGS = ("Could not find a node that matches the configured _HSLayer2Nodes set",
                      "Could not find a node that matches the configured _HSLayer3Nodes set")

# What an authority logs each time it applies its configuration, as at start: test_zy_congestion_control_off
# changes its ConsensusParams (SETCONF) and back. A relay that test_conflux kills and starts again logs these
# and the rest of tor's startup warnings about its configuration.
CONFIGURATION_WARNINGS = (
    "ControlPort is open, but no authentication method has been configured.  This means that any program on "
    "your computer can reconfigure your Tor.  That's bad!  You should upgrade your Tor controller as soon as "
    "possible.",
    "V3AuthVotingInterval is very low. This may lead to failure to synchronise for a consensus.",
    "TestingTorNetwork is set. This will make your node almost unusable in the public Tor network, and is "
    "therefore only advised if you are building a testing Tor network!",
    "Your ContactInfo config option is not set. Please strongly consider setting it, so we can contact you if "
    "your relay is misconfigured, end-of-life, or something else goes wrong. It is also possible that your relay "
    "might get rejected from the network due to a missing valid contact address.",
    "You have used DirAuthority or AlternateDirAuthority to specify alternate directory authorities in your "
    "configuration. This is potentially dangerous: it can make you look different from all other Tor users, and "
    "hurt your anonymity. Even if you've specified the same authorities as Tor uses by default, the defaults "
    "could change in the future. Be sure you know what you're doing.",
    "Your log may contain sensitive information - you disabled SafeLogging. Don't log unless it serves an "
    "important reason. Overwrite the log afterwards.",
    "You are running Tor as root. You don't need to, and you probably shouldn't.")

# Those refused self-test circuits add up in the relay's own path-bias count against its guard; once about
# 150 failed (a longer run) tor warns. "Use counts are 0/0": no stream ever rode them, so they are the
# relay's own circuits, not a client's.
# tor's rate-limited log lines end with how many like them it held back (log_fn_ratelim).
RATE_LIMIT_SUFFIX = re.compile(r" \[\d+ similar message\(s\) suppressed in last \d+ seconds\]$")
SELF_TEST_PATH_BIAS = re.compile(r"\[warn\] Guard \S+ \(\$[0-9A-F]{40}\) is failing an extremely large amount of "
                                 r"circuits\..* Use counts are 0/0\.")


def protocol_warnings(lines: list[str]) -> list[str]:
    found = []
    previous_was_noise = False
    for line in lines:
        if "[warn]" not in line:
            continue
        line = RATE_LIMIT_SUFFIX.sub("", line)
        if line.endswith(RELAY_OWN_WARNINGS + CONFIGURATION_WARNINGS) or SELF_TEST_PATH_BIAS.search(line):
            continue
        if line.endswith(NETWORK_NOISE):
            previous_was_noise = True
            continue
        if previous_was_noise and line.endswith(NOISE_FOLLOW_UP):
            previous_was_noise = False
            continue
        previous_was_noise = False
        found.append(line)
    return found


def test_noise_filter_keeps_real_warnings():
    lines = ["Nov 21 16:35:21.000 [warn] Client asked me to extend back to the previous hop.",
             "Nov 21 16:35:21.000 [warn] connection_edge_process_relay_cell (away from origin) failed.",
             "Nov 21 16:35:22.000 [warn] connection_edge_process_relay_cell (away from origin) failed.",
             "Nov 21 16:35:23.000 [warn] Received a bad SENDME.",
             "Nov 21 17:03:04.000 [warn] Could not find a node that matches the configured _HSLayer2Nodes set",
             "Dec 05 23:56:58.000 [warn] Could not find a node that matches the configured _HSLayer2Nodes set [32 "
             "similar message(s) suppressed in last 420 seconds]",
             "Dec 05 16:47:30.000 [warn] Guard relay2 ($C8F3CC958370B2DE770CA1F7907EA88C940BEE74) is failing an "
             "extremely large amount of circuits. This could indicate a route manipulation attack, extreme network "
             "overload, or a bug. Success counts are 3/151. Use counts are 0/0. 3 circuits completed, 0 were "
             "unusable, 0 collapsed, and 0 timed out. For reference, your timeout cutoff is 60 seconds.",
             "Dec 05 16:47:31.000 [warn] Guard relay2 ($C8F3CC958370B2DE770CA1F7907EA88C940BEE74) is failing an "
             "extremely large amount of circuits. Success counts are 3/151. Use counts are 2/40.",
             "Dec 05 20:58:33.000 [warn] V3AuthVotingInterval is very low. This may lead to failure to synchronise "
             "for a consensus.",
             "Dec 05 20:58:33.000 [warn] V3AuthVotingInterval is very low.",
             "Dec 05 20:57:33.000 [warn] You are running Tor as root. You don't need to, and you probably shouldn't."]
    assert protocol_warnings(lines) == lines[2:4] + lines[7:8] + lines[9:10]


def test_relays_logged_no_protocol_warnings_during_the_tests(network: TestNetwork):
    warnings = {nickname: protocol_warnings(lines)
                for nickname, lines in network.relay_log_lines_since_mark().items()}
    warnings = {nickname: lines for nickname, lines in warnings.items() if lines}
    assert not warnings, "\n".join(f"{nickname}: {line}" for nickname, lines in warnings.items()
                                   for line in lines)
