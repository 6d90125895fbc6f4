"""Resolvers: name IP addresses and host-side interfaces as endpoints."""
