"""Renderers: pure functions from the inventory (and observed facts) to file contents."""
