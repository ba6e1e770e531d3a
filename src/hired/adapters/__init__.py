"""Adapters that put a method into a model family; each one is reversible."""
