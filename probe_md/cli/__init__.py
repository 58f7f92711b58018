"""Command-line front end: a thin layer over functions the tests call directly."""
