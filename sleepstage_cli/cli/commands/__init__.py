"""One module per CLI command: options, a call into the core, the printed result."""
