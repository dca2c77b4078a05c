"""Dataset runs: image sources (folders, globs, lists), the index table, the local executor."""
