"""The web: reader, account, embed, admin API and ops blueprints, plus request-level concerns (headers, health, metrics)."""
