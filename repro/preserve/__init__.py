"""The preservation floor: packages (BagIt), their verification, run records, provenance and replay.

It stands on every floor below it (core, run, SBOMs, transports, builders); only the CLI and the
`archive:` transport's readers above it use it.
"""
