"""Anonymous person tracking and zones: geometry only, never pixels or appearance."""
