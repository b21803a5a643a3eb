"""The command line: the Typer app, console output, shared option and display helpers, and one module per command."""
