"""`make bench`: repro next to the tools users would pick instead, on the same generated inputs."""
