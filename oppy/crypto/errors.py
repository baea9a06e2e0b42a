"""The exceptions raised by oppy's crypto layer.

Each one subclasses ValueError so that a caller handling "bad bytes from the network" can catch
ValueError broadly, while the link and circuit layers can tell the failures apart.
"""


class HandshakeError(ValueError):
    """A circuit handshake (ntor, ntor v3, CREATE_FAST) failed: bad reply, MAC or DH output."""


class CertificateError(ValueError):
    """A relay's CERTS cell did not prove the expected identity (signature, expiry, mismatch)."""


class CertParseError(CertificateError):
    """A certificate or CERTS cell body was malformed (truncated, wrong version, bad extension)."""


class RelayCryptoError(ValueError):
    """No hop of a circuit recognized an inbound relay cell: the circuit must be closed."""
