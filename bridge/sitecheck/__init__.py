"""The live check of a site (``snom-blf-bridge check-site``): log in to Asterisk as the bridge
would, look at what it tells, and say, one line per check, what is ready and how to fix what is
not. ``facts`` holds what was read, ``judge`` turns it into findings (pure), ``ami``/``ari`` read
it, ``local`` checks this host's listeners and store, ``cli`` prints."""
