"""Privacy: what the board tells people, what it logs for the privacy officer, and opt-out."""
