"""The storage layer: every SQL statement reelhook runs lives in this package."""
