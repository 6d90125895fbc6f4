"""``retinad top``: a live terminal view of a running retinad, from its own /metrics.

No events and no Prometheus are needed: two scrapes of the daemon's counters, an interval
apart, give every rate (scrape.py reads, rates.py subtracts, view.py draws, app.py runs the
loop and the keys).
"""
