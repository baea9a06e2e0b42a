"""Tor version numbers, and how a version stands against the consensus's recommended list (sans IO).

GETINFO ``status/version/current`` answers as tor does (versions.c tor_version_parse, tor_version_compare,
tor_version_is_obsolete; control_getinfo.c getinfo_helper_events) for the tor version oppy reports
itself compatible with, against the consensus's ``client-versions``.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["TorVersion", "parse_tor_version", "version_status"]

# versions.c: a version's status orders pre < rc < release (VER_PRE, VER_RC, VER_RELEASE).
_STATUS_PRE, _STATUS_RC, _STATUS_RELEASE = 0, 1, 2
_INT32_MAX = 2**31 - 1

# control_getinfo.c: the words of GETINFO status/version/current for each version_status_t.
RECOMMENDED = "recommended"
OBSOLETE = "obsolete"
NEW = "new"
NEW_IN_SERIES = "new in series"
UNRECOMMENDED = "unrecommended"
NONE_RECOMMENDED = "none recommended"
UNKNOWN = "unknown"


class TorVersion(NamedTuple):
    """Compared field by field in tor_version_compare's order (svn and git tags are ignored here)."""

    major: int
    minor: int
    micro: int
    status: int
    patchlevel: int
    tag: str

    def same_series(self, other: "TorVersion") -> bool:
        return self[:3] == other[:3]


def parse_tor_version(text: str) -> TorVersion | None:
    """A version such as ``0.4.8.10``, ``0.4.9.1-alpha``, ``0.2.0.5pre3`` or ``Tor 0.4.9.11 (git-...)``;
    None when tor could not parse it either. tor_version_parse's grammar:
    "Tor "? NUM "." NUM [ "." NUM [ ("pre" | "rc" | ".") NUM ] ] [ "-" tag ], the tag ending at whitespace."""
    rest = text[4:] if text[:4].lower() == "tor " else text
    numbers: list[int] = []

    def number() -> bool:
        nonlocal rest
        digits = len(rest) - len(rest.lstrip("0123456789"))
        if not digits or int(rest[:digits]) > _INT32_MAX:
            return False
        numbers.append(int(rest[:digits]))
        rest = rest[digits:]
        return True

    def dot() -> bool:
        nonlocal rest
        if not rest.startswith("."):
            return False
        rest = rest[1:]
        return True

    if not (number() and dot() and number()):
        return None
    status = _STATUS_RELEASE
    if rest and not rest.startswith("-"):
        if not (dot() and number()):
            return None
        if rest and not rest.startswith("-"):
            if rest.startswith("pre"):
                status, rest = _STATUS_PRE, rest[3:]
            elif rest.startswith("rc"):
                status, rest = _STATUS_RC, rest[2:]
            elif not dot():
                return None
            if not number():
                return None
    if rest[:1] in ("-", "."):
        rest = rest[1:]
    tag = rest.split(None, 1)[0] if rest and not rest[0].isspace() else ""
    numbers += [0] * (4 - len(numbers))
    return TorVersion(numbers[0], numbers[1], numbers[2], status, numbers[3], tag)


def version_status(mine: str, recommended: str) -> str:
    """How ``mine`` stands against a comma-separated ``recommended`` list (tor_version_is_obsolete)."""
    own = parse_tor_version(mine)
    if own is None:
        return UNKNOWN
    if not recommended:
        return NONE_RECOMMENDED  # no authorities cared or agreed
    found_newer = found_older = found_newer_in_series = found_any_in_series = False
    for item in recommended.split(","):
        other = parse_tor_version(item.strip())
        if other is None:
            continue  # an unparseable version cannot match
        same = own.same_series(other)
        found_any_in_series |= same
        if own == other:
            return RECOMMENDED
        if own < other:
            found_newer = True
            found_newer_in_series |= same
        else:
            found_older = True
    if found_any_in_series and not found_newer_in_series and found_newer:
        return NEW_IN_SERIES
    if found_newer and not found_older:
        return OBSOLETE
    if found_older and not found_newer:
        return NEW
    return UNRECOMMENDED
