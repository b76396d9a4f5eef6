"""What every layer shares: domain records, the exception tree, ids, time, tokens, strict JSON."""
