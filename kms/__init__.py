"""The key store of a node and its ETSI GS QKD 014 key delivery API."""
