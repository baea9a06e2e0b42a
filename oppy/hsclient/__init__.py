"""The onion-service client: descriptors fetched from HSDirs, introduction and rendezvous, streams on the
joined rendezvous circuit (rend-spec-v3). Above the circuit manager and the directory client, below control."""
