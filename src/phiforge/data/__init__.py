"""Records, JSONL I/O and the tiny recipe's seeded data generator."""
