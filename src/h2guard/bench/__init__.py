"""h2guard bench: the resilience scoreboard (clients x failure scenarios, measured and drawn)."""
