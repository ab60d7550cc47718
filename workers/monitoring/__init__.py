"""Provider health checks, circuit state and ops alerts."""
