"""Blueprints: reader pages, embed, admin API, ops."""
