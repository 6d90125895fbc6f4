"""The exporter: metric names (naming.py), scrape meta (collector.py), HTTP (web.py)."""
