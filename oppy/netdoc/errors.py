"""Exceptions raised while reading and checking directory documents (and torrc directory lines).

Every failure has its own class so that callers (and tests) can tell a forged
document from a stale one or from a certificate that merely needs fetching.
All of them derive from :class:`DirectoryError`, itself a ``ValueError``.
"""

from __future__ import annotations


class DirectoryError(ValueError):
    """Base class of every directory-document error."""


# --- parse errors: the bytes are not a well-formed document -----------------


class DocumentParseError(DirectoryError):
    """A directory document is malformed."""


class AuthorityLineError(DocumentParseError):
    """A ``DirAuthority`` or ``FallbackDir`` line is malformed."""


class CertificateParseError(DocumentParseError):
    """An authority key certificate is malformed."""


class ConsensusParseError(DocumentParseError):
    """A network-status consensus is malformed."""


class MicrodescriptorParseError(DocumentParseError):
    """A microdescriptor is malformed."""


# --- key certificate checks (dir-spec creating-key-certificates) ------------


class CertificateError(DirectoryError):
    """An authority key certificate failed verification."""


class UnknownAuthorityError(CertificateError):
    """The certificate's fingerprint is not a configured authority's v3ident."""


class CertificateFingerprintError(CertificateError):
    """The ``fingerprint`` line is not the SHA-1 of the identity key."""


class CertificateExpiredError(CertificateError):
    """``now`` is after the certificate's ``dir-key-expires``."""


class CertificateNotYetValidError(CertificateError):
    """``now`` is before the certificate's ``dir-key-published``."""


class BadCrossCertificateError(CertificateError):
    """``dir-key-crosscert`` is not the signing key's signature of the identity."""


class BadCertificationError(CertificateError):
    """``dir-key-certification`` is not the identity key's signature of the body."""


# --- consensus checks (dir-spec client-operation) ----------------------------


class ConsensusVerificationError(DirectoryError):
    """A consensus failed verification."""


class BadSignatureError(ConsensusVerificationError):
    """Too few good signatures, and at least one signature did not verify."""


class NotEnoughSignaturesError(ConsensusVerificationError):
    """Too few good signatures (keys missing, unknown or absent signers)."""


class ConsensusNotLiveError(ConsensusVerificationError):
    """``now`` lies outside the consensus validity window (plus tolerance)."""
