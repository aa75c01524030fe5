"""Code shared by the master and the worker: no tornado, no requests here."""
