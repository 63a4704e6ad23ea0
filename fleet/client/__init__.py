"""The upload client a robot (or the monitor) talks to the data server with.

upload_client.py (`UploadClient`: uploads with acks, retries, status), window.py (the window
of unacknowledged uploads), policy_fetch.py (receiving and verifying pushed policies).
May import: fleet.wire, fleet.server (keys only), fleet.policy.
"""
