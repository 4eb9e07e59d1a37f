"""Mail: rendering and transports, the transactional outbox, links that leave the site."""
