# Sourced by the scripts: keeps DDS on loopback with the project's own Fast DDS profile.
# The profile alone confines every socket to 127.0.0.1; LOCALHOST discovery range would make
# Fast DDS open extra sockets on 0.0.0.0 (checked with /proc/net/udp in tests/test_ros_fixture.py).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$root/config/fastdds-loopback.xml}"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-SUBNET}"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
