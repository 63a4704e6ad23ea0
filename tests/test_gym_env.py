"""The Gymnasium view of the simulated arm (no ROS): API conformance and a full episode."""
from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim_bridge.gym_env  # noqa: F401  (registers fleet/Grasp-v0)
from sim_bridge.gym_env import ENV_ID, GraspEnv, GraspEnvConfig


@pytest.fixture
def env():
    env = gymnasium.make(ENV_ID, num_objects=2)
    yield env
    env.close()


def test_env_passes_gymnasium_checker(env):
    check_env(env.unwrapped, skip_render_check=False)


def test_episode_runs_to_close_and_lift_with_binary_reward(env):
    observation, info = env.reset(seed=5)
    assert observation.shape == (64, 64, 3) and observation.dtype == np.uint8
    assert env.observation_space.contains(observation)
    assert len(info["objects"]) == 2 and not info["any_lifted"]
    steps, terminated, reward = 0, False, 0.0
    while not terminated:
        observation, reward, terminated, truncated, info = env.step(np.array([0, 0, -1, 0.2], np.float32))
        steps += 1
        assert not truncated and steps <= 8
    assert steps == GraspEnvConfig().servo_steps
    assert reward in (0.0, 1.0)
    assert reward == float(info["gripper_opening"] > 0.01)
    assert "any_lifted" in info and env.observation_space.contains(observation)
    env.reset()
    with pytest.raises(ValueError, match="finite"):
        env.unwrapped.step(np.array([np.nan] * 4, np.float32))
    with pytest.raises(ValueError, match="4 numbers"):
        env.unwrapped.step(np.zeros(3, np.float32))


def test_reset_with_seed_reproduces_objects():
    first = GraspEnv(None, None, num_objects=2)
    second = GraspEnv(None, None, num_objects=2)
    try:
        assert first.reset(seed=11)[1]["objects"] == second.reset(seed=11)[1]["objects"]
        assert np.array_equal(first.reset(seed=11)[0], second.reset(seed=11)[0])
    finally:
        first.close()
        second.close()
    with pytest.raises(TypeError, match="unknown SimConfig fields"):
        GraspEnv(None, None, num_object=2)
