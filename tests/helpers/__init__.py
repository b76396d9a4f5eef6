"""Helpers shared by several test modules, one module per topic (never imported from a test
module by another)."""
