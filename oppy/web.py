"""A twisted.web Agent whose requests go through oppy, so that ``treq`` (or any Agent user) works over Tor.

    agent = oppy.web.agent(reactor, tor=launched_oppy)            # an oppy in this process
    agent = oppy.web.agent(reactor, socks_endpoint=TCP4ClientEndpoint(reactor, "127.0.0.1", 9050))
    response = yield treq.get("https://example.com/", agent=agent)

Every request's connection is a :class:`~oppy.endpoints.TorClientEndpoint` to the URL's host and port (the
hostname resolved by the exit), with TLS over it for ``https`` (``tls_policy``: Twisted's browser-like
certificate checks unless given another ``IPolicyForHTTPS``).
"""

from __future__ import annotations

from twisted.internet.endpoints import wrapClientTLS
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from oppy.endpoints import StreamOpener, TorClientEndpoint

__all__ = ["agent", "TorEndpointFactory"]


@implementer(IAgentEndpointFactory)
class TorEndpointFactory:
    """The Agent's connections: one TorClientEndpoint per (scheme, host, port), TLS for https."""

    def __init__(self, *, tor: StreamOpener | None, socks_endpoint, reactor, username, password,
                 tls_policy: IPolicyForHTTPS) -> None:
        self.tor = tor
        self.socks_endpoint = socks_endpoint
        self.reactor = reactor
        self.username, self.password = username, password
        self.tls_policy = tls_policy

    def endpointForURI(self, uri):  # noqa: N802 - Twisted's naming
        endpoint = TorClientEndpoint(uri.host.decode("idna"), uri.port, tor=self.tor,
                                     socks_endpoint=self.socks_endpoint, reactor=self.reactor,
                                     username=self.username, password=self.password)
        if uri.scheme == b"https":
            return wrapClientTLS(self.tls_policy.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint


def agent(reactor, *, tor: StreamOpener | None = None, socks_endpoint=None, username: str | bytes | None = None,
          password: str | bytes | None = None, pool: HTTPConnectionPool | None = None,
          tls_policy: IPolicyForHTTPS | None = None) -> Agent:
    """An Agent through ``tor`` (an oppy launched in this process) or ``socks_endpoint`` (a SocksPort;
    127.0.0.1:9050 when neither is given). ``username``/``password`` isolate its streams from others'."""
    factory = TorEndpointFactory(tor=tor, socks_endpoint=socks_endpoint, reactor=reactor, username=username,
                                 password=password, tls_policy=tls_policy or BrowserLikePolicyForHTTPS())
    return Agent.usingEndpointFactory(reactor, factory, pool=pool)
