"""Running reelhook: metrics, logging, rate limits, retention, backups and start-up checks."""
