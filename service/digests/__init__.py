"""Digests: due slots and runs, fan-out and recovery (dispatch), batch sending, the digest mail, the send journal."""
