"""The diffmem command line."""
