"""converterctl: the user's command line for the converter master (requests only)."""
