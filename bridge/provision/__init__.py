"""Provisioning documents for phones: what a phone must be told to use the bridge."""
