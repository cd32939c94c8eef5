"""Switchboard media layer."""
