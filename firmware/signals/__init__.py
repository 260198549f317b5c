"""Behavioural signals computed from tracks and poses: no pixels, no identities."""
