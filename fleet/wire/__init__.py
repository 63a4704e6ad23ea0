"""The wire format: what robots and the data server exchange, and what a spool file holds.

protocol.py (ZeroMQ frames, message types, versions, error codes), records.py (an attempt and
its steps as msgpack frames), validation.py (the server's checks of an upload), depth_image.py
(16-bit PNG depth), attempt_file.py (one attempt on disk: the spool's file format).
docs/protocol.md is the contract.
May import: nothing else of fleet.
"""
