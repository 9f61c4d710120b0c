"""Thin stage entry points: parse a config, call the library."""
