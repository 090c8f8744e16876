"""Supervision strategies; importing this package registers them all."""
