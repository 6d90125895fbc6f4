"""``retinad flows``: follow a running daemon's flow records live (a client, like top/)."""
