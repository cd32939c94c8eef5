"""Switchboard engine layer."""
