"""snom-blf-bridge: Busy Lamp Field with call pickup for Snom phones on Asterisk."""

__version__ = "0.1.0"
