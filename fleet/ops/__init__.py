"""Operations: which processes run where, and `fleet sim`.

plan.py (config/arms.yaml -> the ROS 2 nodes per arm; launch/arms.launch.py uses it too),
supervisor.py (starting, restarting and stopping child processes), processes.py (the fleet's
processes: server, learner, monitor, each arm's nodes), sim_fleet.py (`fleet sim`: all of them on
this machine), ray_fleet.py and ray_driver.py (`fleet sim --ray`: each arm a Ray actor on a cluster node,
and the driver that places and watches them).
May import: fleet.registry, fleet.policy, fleet.server.
"""
