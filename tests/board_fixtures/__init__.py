"""Synthetic training runs for the Darkboard tests (generated, nothing stored)."""
