"""Speed, memory and quality benchmarks of the change-detection core (see RESULTS.md)."""
