"""What the tests, benchmarks and the simulator share: servers under test, load, fuzzing, simulated
worlds. It may import every layer below it; only tests/ and scripts/ import it."""
