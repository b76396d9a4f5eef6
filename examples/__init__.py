"""Runnable examples (each file also runs as a script)."""
