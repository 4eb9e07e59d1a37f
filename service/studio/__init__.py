"""The studio: the publisher's web app under /studio (staff accounts and sessions, posts, digests, settings)."""
