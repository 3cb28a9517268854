"""The run floor: what executes inside an image (sessions, executors, the reaper, emulation, MPI).

It stands on the core (images, stores, extraction) and is used by the builders, the bundle transport and
the preservation floor; nothing in the core imports it.
"""
