"""`fedge audit`: what the coordinator can learn from what it sees."""
