"""The operator console: a web UI and JSON API on every gateway, state in Redis."""
