"""Monitoring: what operators watch, per robot.

monitor.py (polls the server's counters into rates, success and state), dashboard.py and
dashboard.html (the web page and /metrics), status.py (`fleet status` and `fleet monitor`).
May import: fleet.client, fleet.server, fleet.wire.
"""
