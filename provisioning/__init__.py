"""Switchboard provisioning layer."""
