"""Onion services (rend-spec-v3), client side: the pure half.

Addresses, key blinding, time periods, the HSDir hash ring, the hs-ntor handshake, descriptors and
their cache, all sans-IO; the circuits that fetch descriptors and meet services are built above.
"""
