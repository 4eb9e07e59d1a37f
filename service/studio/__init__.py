"""The publisher's web app under /studio: dashboard, subscribers, posts, digests, settings."""
