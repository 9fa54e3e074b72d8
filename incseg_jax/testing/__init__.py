"""Writers of tiny fake dataset trees in each publisher's on-disk layout (tests, demos)."""
