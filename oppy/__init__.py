"""oppy: an onion-routing client proxy daemon, and a Tor client library for Twisted programs.

``oppy.launch(reactor, ...)`` starts one in this process (``oppy.library``); ``oppy.endpoints`` and
``oppy.web`` connect through it. They are imported when first used, so the ``oppy`` command and the layers
below never load them.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """PEP 562: ``oppy.launch`` (and ``oppy.LaunchError``) without importing Twisted for ``oppy --version``."""
    if name in ("launch", "LaunchError"):
        from oppy import library

        return getattr(library, name)
    raise AttributeError(f"module 'oppy' has no attribute {name!r}")
