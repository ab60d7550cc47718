"""The ledger's records and how they are written: payment states, tables, the outbox, group commit."""
