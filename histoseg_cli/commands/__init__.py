"""One module per ``histoseg`` subcommand; each only parses options and calls the core."""
