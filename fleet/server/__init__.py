"""The data server: the socket loop robots upload to, and what it does with what arrives.

server.py (`DataServer`: ROUTER socket, CURVE, the loop), ingest.py (batching uploads into
group commits), sessions.py (robots' sessions and heartbeats), metrics.py (Prometheus),
policy_service.py (announcing and sending policies), keys.py (CURVE keys and the allow-list),
binding.py (bind addresses, and what a bind beyond loopback requires).
May import: fleet.wire, fleet.store, fleet.policy.
"""
