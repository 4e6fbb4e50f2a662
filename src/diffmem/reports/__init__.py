"""Renderers: they read saved results and never compute them."""
