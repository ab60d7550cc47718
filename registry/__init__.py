"""The plugin registry: database, instances and health, catalogue, routing, secrets, HTTP API."""
