"""Snom LED remote control: keys lit from Asterisk state with SIP MESSAGE application/x-buttons."""
