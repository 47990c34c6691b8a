"""SANS-IO core of the diode protocol: bytes in, bytes and events out.

Nothing here opens a socket, talks to Kafka, reads a clock or draws randomness on its own:
time (``now``) and random bytes are passed in by the caller.
"""
