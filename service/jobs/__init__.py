"""Jobs: the catalog, submission, lifecycle, callback ingest, deadlines, held requests, mirrors."""
