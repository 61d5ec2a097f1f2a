"""The ``mltrain`` command: argument parsing, subcommands, output, and the one error boundary."""
