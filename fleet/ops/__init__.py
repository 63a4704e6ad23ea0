"""Operations: which processes run where, and `fleet sim`.

plan.py (config/arms.yaml -> the ROS 2 nodes per arm; launch/arms.launch.py uses it too),
supervisor.py (starting, restarting and stopping child processes), sim_fleet.py (`fleet sim`:
server, learner, monitor and the simulated arms on this machine).
May import: fleet.registry, fleet.policy, fleet.server.
"""
