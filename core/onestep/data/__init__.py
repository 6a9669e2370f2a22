"""Data sources and resumable batch streams."""
