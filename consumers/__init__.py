"""Long-running processes built on the engine."""
