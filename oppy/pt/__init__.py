"""Pluggable transports (torspec pt-spec): the managed-proxy protocol, SOCKS5 to a transport with a bridge's
arguments, and the transport processes oppy runs.

Layering: sans-IO cores (``protocol``, ``socks5``, ``plugin``) and thin Twisted adapters; this package
imports only ``oppy.logs``, so the configuration can parse ``ClientTransportPlugin`` with it and the link
layer can reach a bridge through it.
"""
