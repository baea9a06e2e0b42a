"""oppy: an onion-routing client proxy daemon."""

__version__ = "0.1.0"
