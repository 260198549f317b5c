"""Signed OTA bundles, A/B slots and rollback for cuecam boards (built in the OTA issue)."""
