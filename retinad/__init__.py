"""retinad: eBPF network observability for Linux hosts."""

__version__ = "0.1.0"
"""The one place the version is written: pyproject.toml, the deb and the rpm read it here."""
