"""DNSPort: answering DNS queries from local applications by resolving through Tor (RESOLVE on exit circuits)."""
