"""Over-the-air updates for cuecam boards.

``ota.bundle`` builds signed bundles and verifies them into a staging directory; ``ota.corpus``
derives tampered bundles from a good one for tests; ``ota.slots`` keeps the A/B slots, trial boots
and rollback.
"""
