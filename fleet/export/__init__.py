"""Export of the episode store for other tools: `fleet export` (docs/store.md, "Exporting").

select.py (filters, named shard errors), msgdefs.py (ROS 2 msgdefs), mcap_writer.py (one ROS 2
.mcap per robot), lerobot.py (starts lerobot_writer.py, a LeRobotDataset, in LeRobot's own
venv), cli.py (the subcommand). Reads only rolled shards; never writes the store.
May import: fleet.store, fleet.wire, fleet.policy.
"""
