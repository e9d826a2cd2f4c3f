"""The nano world: the whole system in miniature, built offline on a CPU in minutes."""
