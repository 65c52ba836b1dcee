"""Integration tests: h2guard against h2guard over loopback."""
