"""`fedge simulate`: a fleet of real device runtimes and a real coordinator in one process."""
