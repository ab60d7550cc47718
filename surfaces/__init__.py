"""What people and programs touch: the HTTP app (billing, webhooks, registry API, console) and the CLI."""
