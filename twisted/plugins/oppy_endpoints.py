"""Twisted's string endpoints learn ``oppy:``: ``clientFromString(reactor, "oppy:host=example.com:port=80")``.

A dropin module (no ``__init__.py`` beside it): Twisted finds it in every ``twisted/plugins`` directory on
``sys.path``, in the source tree and where pip installed oppy. The parsing is ``oppy.endpoints``'s.
"""

from twisted.internet.interfaces import IStreamClientEndpointStringParserWithReactor
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class _OppyClientParser:
    prefix = "oppy"

    def parseStreamClient(self, reactor, *args, **kwargs):  # noqa: N802 - Twisted's naming
        from oppy.endpoints import endpoint_from_string_arguments

        return endpoint_from_string_arguments(reactor, *args, **kwargs)


oppy_client_parser = _OppyClientParser()
