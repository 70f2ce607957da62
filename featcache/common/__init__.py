"""Mechanisms every stage shares, each implemented once: user errors, progress bars, atomic file writes,
plain-data serialisation, settings diffs, devices and threads, a background producer, lazy exports, and the
files embedded in the package (resources).

May import: nothing else from featcache (every other package imports this one).
"""
