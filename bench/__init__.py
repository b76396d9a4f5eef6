"""``make bench``: reelhook's performance suite, measured against bare baselines in the same run."""
