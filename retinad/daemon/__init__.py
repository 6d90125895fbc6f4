"""The daemon: lifecycle (start, reload, stop, signals) and systemd notification."""
