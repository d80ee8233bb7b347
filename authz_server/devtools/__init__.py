"""Tools for development and the local demo: never on the request path."""
