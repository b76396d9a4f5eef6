"""Running reelhook: metrics and instrumentation, rate limits, retention and backups."""
