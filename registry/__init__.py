"""The plugin registry: database and migrations, instances and health, catalogue, routing, secrets."""
