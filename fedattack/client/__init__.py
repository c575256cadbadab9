"""Flower client: realistic local training under client-side defenses."""
