"""Switchboard routing layer."""
