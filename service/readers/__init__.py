"""Readers: subscribing and leaving, addresses, abuse limits, who may read what, the subscriber list as CSV."""
