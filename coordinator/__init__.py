"""fedge coordinator: sampling, rounds, validation, aggregation strategies."""
