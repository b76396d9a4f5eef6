"""reelhook: Kling video jobs in, verified and signed webhook events out."""
