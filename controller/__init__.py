"""qnet's controller: config, supervisor, acquisition, interlocks, commands and the CLI.

The only package that composes the others.
"""
