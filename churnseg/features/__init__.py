"""Pure table-in, table-out functions: contract, cleaning, features, labels (no I/O)."""
