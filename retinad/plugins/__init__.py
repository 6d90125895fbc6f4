"""Plugins: each one a data source (BPF programs + their collector) with one lifecycle."""
