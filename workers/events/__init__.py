"""Getting committed events out: the outbox relay, the broker client and the event stream."""
