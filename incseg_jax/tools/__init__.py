"""Command-line utilities (weight conversion)."""
