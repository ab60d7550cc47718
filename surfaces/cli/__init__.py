"""The ``tender`` command line and the demo."""
